"""Per-kernel time of one forward and one backward of workload W (torch.profiler).

    python bench/cuda_profile.py [--n 65536]

Other shapes for one kernel's own rate, e.g. pass 1 as 120 CTAs of 64 blocks, one per SM
(8 heads × 15 segments of 4K tokens with a pass 1; no decay, so no horizon and every block
read): --heads 8 --slope zero --seg-len 4096 --n 65536.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lightning_attention.kernels.cuda_backend import BACKEND as C
import lightning_attention as la

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, nargs="+", default=[1024, 65536])
ap.add_argument("--dslope", action="store_true", help="backward with the d slope terms")
ap.add_argument("--heads", type=int, default=32)
ap.add_argument("--slope", choices=["alibi", "zero"], default="alibi", help="zero: no decay horizon")
ap.add_argument("--seg-len", type=int, help="the ops' segment length in tokens (default: the plan's)")
args = ap.parse_args()
H, D = args.heads, 128
slope = la.build_slopes(H).float().cuda()
if args.slope == "zero":
    slope.zero_()
seg = {} if args.seg_len is None else {"seg_len": args.seg_len}
for N in args.n:
    B = 65536 // N
    q, k, v, do = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                   for _ in range(4))
    for _ in range(3):
        kept = C.fwd(q, k, v, slope, 1.0, None, None, False, **seg)[2]
        C.bwd(do, None, q, k, v, slope, 1.0, None, None, args.dslope, kept, **seg)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            kept = C.fwd(q, k, v, slope, 1.0, None, None, False, **seg)[2]
            C.bwd(do, None, q, k, v, slope, 1.0, None, None, args.dslope, kept, **seg)
        torch.cuda.synchronize()
    print(f"N = {N}, B = {B}: per-kernel CUDA time over 5 fwd+bwd (ms total)")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=10, max_name_column_width=70))
