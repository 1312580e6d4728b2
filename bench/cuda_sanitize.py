"""A small case of every CUDA op (multi-segment, varlen, states) for compute-sanitizer:

    compute-sanitizer --tool memcheck  python3 bench/cuda_sanitize.py
    compute-sanitizer --tool racecheck python3 bench/cuda_sanitize.py

On sm_90a the backward's dk/dv sweep runs the fused kernel (at D = 64 both of its rings), or
with LIGHTNING_ATTENTION_SM90_FUSED_BWD=0 in the environment the two reversed passes; run both.
On sm_90a the segments of 7 blocks take pass 1 in two parts (up to each head's decay horizon;
every token with LIGHTNING_ATTENTION_HORIZON=0), and the d slope cases' dq sweep runs on the
sm_90a kernels (pass 1 with the moments, pass 2 with the terms); with
LIGHTNING_ATTENTION_SM90=0 every case runs the mma.sync kernels of the sm_80 build.
"""
import torch

from lightning_attention.kernels.cuda_backend import BACKEND as C

ops = torch.ops.lightning_attention_C

torch.manual_seed(0)
for D in (64, 128):
    for dtype in (torch.bfloat16,):
        B, H, N = 1, 2, 700
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=dtype) for _ in range(4))
        slope = torch.rand(H, device="cuda")
        s0 = torch.randn(B, H, D, D, device="cuda")
        cu = torch.tensor([0, 7, 7, 200, 700], dtype=torch.int32, device="cuda")
        s1 = torch.randn(4, H, D, D, device="cuda")
        # one segment per sequence; pass 1 + scan + pass 2 with segments of 2, 5 and 7 blocks;
        # without and with d slope
        for seg_len in (None, 128, 320, 448):
            for dslope in (False, True):
                o, fs, kept = C.fwd(q, k, v, slope, 1.0, s0, None, True, seg_len=seg_len)
                C.bwd(do, torch.randn_like(fs), q, k, v, slope, 1.0, s0, None, dslope, kept,
                      seg_len=seg_len)
                o, fs, kept = C.fwd(q, k, v, slope, 1.0, s1, cu, True, seg_len=seg_len)
                C.bwd(do, torch.randn_like(fs), q, k, v, slope, 1.0, s1, cu, dslope, kept,
                      seg_len=seg_len)
            # no decay, no states; (B, N, H, D) memory
            C.bwd(do, None, q, k, v, None, 0.5, None, None, False, seg_len=seg_len)
            qt, kt, vt, dot = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v, do))
            C.bwd(dot, None, qt, kt, vt, slope, 1.0, None, None, False, seg_len=seg_len)
            # serving: pool rows by slot (a padding sequence, one from zero, in place)
            pool = torch.randn(6, H, D, D, device="cuda")
            ops.pool_prefill(q, k, v, slope, 1.0, cu, pool, torch.tensor(
                [4, -1, 0, 2], dtype=torch.int32, device="cuda"), torch.tensor(
                [True, True, False, True], device="cuda"), seg_len=seg_len)
        st = torch.randn(2, H, D, D, device="cuda")
        x = [t[0, :, :2].transpose(0, 1).contiguous() for t in (q, k, v)]
        C.decode(*x, st, slope, 1.0)
        # few rows: E split over CTAs per (b, h); 80 rows: one CTA per (b, h)
        ops.pool_decode(*x, torch.randn(5, H, D, D, device="cuda"),
                        torch.tensor([3, -1], dtype=torch.int32, device="cuda"), slope, 1.0)
        x = [torch.randn(80, H, D, device="cuda", dtype=dtype) for _ in range(3)]
        ops.pool_decode(*x, torch.randn(100, H, D, D, device="cuda"),
                        torch.randperm(100, device="cuda")[:80].int(), slope, 1.0)
# the fused dk/dv sweep with more CTAs than SMs (144: at D = 64 its ring with one barrier per
# stage; the cases above, fewer, take the split ring)
q, k, v, do = (torch.randn(1, 24, 700, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
C.bwd(do, None, q, k, v, torch.rand(24, device="cuda"), 1.0, None, None, False, seg_len=128)
# pass 1 up to the decay horizon in parts of 4 blocks, some of which read no tokens (the
# first head's horizon is 44 tokens) beside others that read all (the second's, 13K)
q, k, v, do = (torch.randn(1, 2, 2100, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
slope = torch.tensor([3.0, 0.01], device="cuda")
C.fwd(q, k, v, slope, 1.0, None, None, True, seg_len=1024)
C.bwd(do, None, q, k, v, slope, 1.0, None, None, False, seg_len=1024)
# the bulk decode kernel: more (b, h) than resident CTAs (every third row pads) and D = E = 256
# (a state of 256 KB: the 64 KB ring four times)
for B, d in ((300, 64), (80, 256)):
    x = [torch.randn(B, 2, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    slots = torch.randperm(2 * B, device="cuda")[:B].int()
    slots[1::3] = -1
    ops.pool_decode(*x, torch.randn(2 * B, 2, d, d, device="cuda"), slots,
                    torch.rand(2, device="cuda"), 1.0)
torch.cuda.synchronize()
print("sanitize case done")
