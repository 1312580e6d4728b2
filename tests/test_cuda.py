"""The CUDA backend (csrc/, lightning_attention/kernels/cuda_backend) against the float64 truth, with
the error bounded by 2x the error of the plain quadratic form in the same dtype
(tests/utils.py: check_backend).

CPU: the extension imports and its ops register (when it is built). GPU: every feature
combination (decay or slopes of 0, scale, initial/final state, cu_seqlens with empty and
length-1 sequences; malformed offsets), every dtype of
config.CUDA_DTYPES and D = E of config.CUDA_HEAD_DIMS, BHND/BNHD/strided inputs, awkward N,
outputs poisoned with NaN, N = 1M tokens, bitwise-deterministic backward, decode, opcheck,
pass 1 with and without the decay horizon and the learnable-slope backward with and without
its own plans (switches read once: in child processes).
"""
import os
import subprocess
import sys

import pytest
import torch

import utils
from utils import gpu

import lightning_attention as la
from lightning_attention import dispatch
from lightning_attention.kernels import cuda_backend as cuda
from lightning_attention.kernels.torch_backend import blocks

C = cuda.BACKEND
built = pytest.mark.skipif(cuda._C is None, reason="the CUDA extension is not built")
DTYPES = list(la.config.CUDA_DTYPES)
HEAD_DIMS = list(la.config.CUDA_HEAD_DIMS)


def sm90_kernels():
    """Whether the backend runs its sm_90a kernels here: a build with 9.0a on compute
    capability 9.0, unless LIGHTNING_ATTENTION_SM90=0 (bench/gpu_run.sh's MMA=1) picks the
    mma.sync ones, which have neither the decay horizon nor the kept states."""
    return (torch.cuda.get_device_capability() == (9, 0) and "9.0a" in cuda._C.cuda_archs
            and os.environ.get("LIGHTNING_ATTENTION_SM90") != "0")


@built
def test_extension_registers_ops():
    """CPU too: the module imports, exposes its build metadata, and registers the ops."""
    info = cuda.build_info()
    assert set(info["head_dims"]) == set(la.config.CUDA_HEAD_DIMS)
    assert set(cuda._C.smem_bytes) == set(info["head_dims"]) and info["dtypes"]
    for name in ("fwd", "bwd", "decode", "pool_prefill", "pool_decode"):
        assert hasattr(torch.ops.lightning_attention_C, name)


@built
def test_shared_memory_refusal_per_head_dim(monkeypatch):
    """CPU too: a GPU with less shared memory per block than a head dim's kernels need refuses
    that head dim alone (an A100's 163 KiB: D = 64 runs, D = 128 goes elsewhere, saying why),
    and a GPU below compute capability 8.0 refuses every head dim."""
    class Props:
        def __init__(self, major, smem):
            self.major, self.minor, self.shared_memory_per_block_optin = major, 0, smem
    need = cuda._C.smem_bytes
    small, large = min(need, key=need.get), max(need, key=need.get)
    assert need[small] < need[large]
    for props, refused in ((Props(8, need[large] - 1), {large}), (Props(9, need[large]), set()),
                           (Props(7, 10 ** 6), set(need))):
        monkeypatch.setattr(cuda, "_DEVICE_REFUSAL", {})
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
        for D in need:
            why = cuda._device_refusal(0, D)
            assert (why is not None) == (D in refused), (D, why)
            if D in refused and props.major >= 8:
                assert f"D = {D}" in why and str(need[D]) in why


def check_cuda(*, D=64, dtype=torch.bfloat16, initial_state=True, final_state=True, **kw):
    """lightning_attn(backend="cuda"), D = E, outputs poisoned, against truth and baseline."""
    utils.check_backend("cuda", device="cuda", D=D, E=D, dtype=dtype,
                        initial_state=initial_state, final_state=final_state, **kw)


def run_child(code, **env):
    """`code` in a fresh Python process with `env` set (the extension reads its switches once
    per process), tests/ on the path; it must print "ok" last."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([here, os.path.join(here, "..")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


@pytest.fixture
def seg_len(monkeypatch):
    """Force the segment length (tokens) of the CUDA ops (utils.cuda_with_seg_len)."""
    def set_len(n):
        monkeypatch.setitem(dispatch.BACKENDS, "cuda", utils.cuda_with_seg_len(n))
    return set_len


@gpu
@built
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("N", [1, 63, 65, 1000, 4097])
@pytest.mark.parametrize("seg", [128, 1 << 20])
def test_shapes(dtype, D, N, seg, seg_len):
    seg_len(seg)
    check_cuda(B=2, H=3, N=N, D=D, dtype=dtype, scale=0.5)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seg", [128, 1 << 20])
@pytest.mark.parametrize("varlen", [False, True])
def test_backward_fixed_slope(D, dtype, seg, varlen, seg_len):
    """A slope without a gradient (the usual case: fixed ALiBi slopes), so the backward's
    dk/dv sweep has no d slope terms (on sm_90a: the reversed-time kernel), single- and
    multi-segment, packed sequences with an empty one."""
    seg_len(seg)
    cu = [0, 100, 100, 1300, 1301, 2000] if varlen else None
    check_cuda(B=1 if varlen else 2, H=2, N=2000 if varlen else 1000, D=D, dtype=dtype,
               slope_grad=False, cu_seqlens=cu, scale=0.7)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("layout", ["bnhd", "strided"])
@pytest.mark.parametrize("N", [1, 63, 65, 4097])
def test_backward_fixed_slope_shapes(D, layout, N, seg_len):
    """The same sweep at awkward lengths (a partial block processed first, one-token
    sequences) in the other layouts, over several segments, with a negative scale (the
    reversed sweep's key weights carry it). At D = 64 on 132 SMs both rings of the fused
    sm_90a sweep: one barrier per stage at N = 4097 (198 CTAs), the split ring below."""
    seg_len(128)
    check_cuda(B=2, H=3, N=N, D=D, layout=layout, slope_grad=False, scale=-0.5)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("seg", [448, 512])
@pytest.mark.parametrize("varlen", [False, True])
def test_long_segments(D, seg, varlen, seg_len):
    """Segments of 7 and 8 blocks, so that pass 1 (forward and reversed) takes groups of
    full blocks (la_state_sm90.cuh: 4 per iteration), single blocks after a group, and in
    reversed time a partial block before the groups; the fixed-slope backward, packed
    sequences with an empty one. On sm_90a pass 1 runs in two parts of 4 blocks (the second
    part of a 7-block segment is short)."""
    seg_len(seg)
    cu = [0, 100, 100, 1300, 1301, 2000] if varlen else None
    check_cuda(B=1 if varlen else 2, H=2, N=2000 if varlen else 1000, D=D, slope_grad=False,
               cu_seqlens=cu, scale=-0.5)


@gpu
@built
@pytest.mark.parametrize("switch", ["0", "1"])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_decay_horizon(D, switch):
    """Pass 1 with and without the stop at each head's decay horizon
    (LIGHTNING_ATTENTION_HORIZON, which the extension reads once per process: so in a child
    process): heads without decay and with weak, medium and strong decay (a horizon inside
    one block) over 1024-token segments (pass 1 in parts of 256 tokens, some of which read
    no tokens with the horizon and store no state), the forward and the fixed-slope backward
    (both directions of pass 1), packed sequences with an empty one, states in and out,
    against the float64 truth; a head with a horizon of one token (decay="steep": in reverse
    no part of a segment has tokens left, and part 0 stores a zero state); the
    learnable-slope backward (pass 1 with moments up to their horizon, in parts; d slope per
    head); and a NaN past the horizon that the skip keeps from the neighbouring segment, and
    only the skip, in each pass 1 (of the sm_90a kernels: the mma.sync ones read every token,
    so there it reaches the neighbour either way)."""
    code = f"""
import torch, utils
from lightning_attention import dispatch
dispatch.BACKENDS["cuda"] = cuda = utils.cuda_with_seg_len(1024)
for decay, cu in (("mixed", None), ("mixed", [0, 700, 700, 2300, 3000]), ("steep", None)):
    utils.check_backend("cuda", device="cuda", B=1 if cu else 2, H=4, N=3000 if cu else 4097,
                        D={D}, E={D}, dtype=torch.bfloat16, decay=decay, cu_seqlens=cu,
                        initial_state=True, final_state=True, slope_grad=False, scale=0.5)
for cu in (None, [0, 700, 700, 2300, 3000]):  # a learnable slope
    utils.check_backend("cuda", device="cuda", B=1 if cu else 2, H=4, N=3000 if cu else 4097,
                        D={D}, E={D}, dtype=torch.bfloat16, decay="mixed", cu_seqlens=cu,
                        initial_state=True, final_state=True, scale=0.5)
# the skip happens: a NaN past the strong head's horizon (a key 250 tokens before segment 0's
# last token; a dO in segment 1's second block) stays out of the neighbouring segment
q, k, v = utils.make_inputs(1, 4, 2048, {D}, {D}, dtype=torch.bfloat16, device="cuda")
slope = utils.make_slope("mixed", 4, "cuda")
do = torch.randn_like(v)
do[0, 3, 1124] = float("nan")
dk = cuda.bwd(do, None, q, k, v, slope, 1.0, None, None, False)[1]
k[0, 3, 773] = float("nan")
o = cuda.fwd(q, k, v, slope, 1.0, None, None, False)[0]
dq = cuda.bwd(torch.randn_like(v), None, q, k, v, slope, 1.0, None, None, True)[0]  # moments
kept = [bool(torch.isfinite(x[0, 3, a:b]).all())
        for x, a, b in ((o, 1024, 2048), (dk, 0, 1024), (dq, 1024, 2048))]
assert kept == [{switch == "1" and sm90_kernels()}] * 3, kept
print("ok")
"""
    run_child(code, LIGHTNING_ATTENTION_HORIZON=switch)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_dslope_long_segments(D, seg_len):
    """d slope over segments of 8 blocks, so that pass 1 with moments runs its recurrence
    over several blocks (on sm_90a: la_state_sm90.cuh kMoments), packed sequences with an
    empty one, an initial state."""
    seg_len(512)
    check_cuda(B=1, H=2, N=2000, D=D, cu_seqlens=[0, 100, 100, 1300, 1301, 2000])


@gpu
@built
@pytest.mark.parametrize("switch", ["0", "1"])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_dslope_plans(D, switch):
    """The learnable-slope backward without and with LIGHTNING_ATTENTION_DSLOPE_PLANS (in a
    child process): over 1024-token segments the switch runs the dq sweep's pass 1 with
    moments in 4 parts of 4 blocks, the scan combining them, and the dk/dv sweep on a plan
    without moments (pass 1 up to the decay horizon, in parts: random slopes put some heads'
    horizons inside a segment); dense and packed (an empty sequence), states in and out, every
    gradient and d slope against the float64 truth."""
    code = f"""
import torch, utils
from lightning_attention import dispatch
dispatch.BACKENDS["cuda"] = utils.cuda_with_seg_len(1024)
for cu in (None, [0, 700, 700, 2300, 3000]):
    utils.check_backend("cuda", device="cuda", B=1 if cu else 2, H=3, N=3000 if cu else 4097,
                        D={D}, E={D}, dtype=torch.bfloat16, cu_seqlens=cu, initial_state=True,
                        final_state=True, scale=0.5)
print("ok")
"""
    run_child(code, LIGHTNING_ATTENTION_DSLOPE_PLANS=switch)


@gpu
@built
@pytest.mark.parametrize("switch", ["0", "1"])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_dslope_residual(D, switch):
    """The dq sweep's d slope terms read S as its 16-bit copy and that copy's residual (the
    default), or with LIGHTNING_ATTENTION_DSLOPE_RESIDUAL=0 the copy alone (in a child
    process). check_backend's case with 128-token segments either way (without the residual
    one fixed draw: a weak head among its random slopes can fail it); then, with the
    residual, a weakly decaying head (slope 0.0135) over 1000 tokens, an initial state and a
    final-state loss, where the block terms cancel ~4,000-fold: d slope within 2.5e-4 of the
    largest head's over six draws. On an H200 eight such draws read 6e-7 to 6e-5 with the
    residual and 9e-5 to 4e-3 without it (bench/NOTES.md)."""
    code = f"""
import torch, utils
import lightning_attention as la
from lightning_attention import dispatch
dispatch.BACKENDS["cuda"] = utils.cuda_with_seg_len(128)
if not {switch}:  # without the residual about one random draw in 1,000 reads a weak head off
    torch.manual_seed(1)
utils.check_backend("cuda", device="cuda", B=2, H=3, N=1000, D={D}, E={D}, dtype=torch.bfloat16,
                    initial_state=True, final_state=True, scale=0.5)
for _ in range(6 if {switch} else 0):
    q, k, v = utils.make_inputs(2, 3, 1000, {D}, {D}, dtype=torch.bfloat16, device="cuda")
    slope = torch.tensor([0.0135, 0.1129, 0.3566], device="cuda", requires_grad=True)
    s0 = utils.rand_state(2, 3, {D}, {D}, "cuda")
    do, dfinal = torch.randn_like(v), torch.randn_like(s0)
    o, fs = la.lightning_attn(q, k, v, slope, scale=0.5, initial_state=s0,
                              output_final_state=True, backend="cuda")
    torch.autograd.backward([o, fs], [do, dfinal])
    ref = utils.truth(q, k, v, slope.detach(), 0.5, s0, None, do, dfinal)[2][3]
    err = utils.dslope_error(slope.grad, ref)
    assert err < 2.5e-4, (err, slope.grad.tolist(), ref.tolist())
print("ok")
"""
    run_child(code, LIGHTNING_ATTENTION_DSLOPE_RESIDUAL=switch)


@gpu
@built
@pytest.mark.parametrize("layout", ["bnhd", "strided"])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_layouts(layout, D):
    check_cuda(B=2, H=3, N=1000, D=D, layout=layout)


@gpu
@built
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("states", [True, False])
@pytest.mark.parametrize("N", [200, 3000])
def test_features(decay, states, N):
    check_cuda(B=1, H=2, N=N, D=128, decay=decay, initial_state=states, final_state=states)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seg", [128, None])
def test_varlen(D, dtype, seg, seg_len):
    """Packed sequences with an empty one, long enough for several segments."""
    if seg:
        seg_len(seg)
    check_cuda(B=1, H=2, N=2000, D=D, dtype=dtype, cu_seqlens=[0, 100, 100, 1300, 1301, 2000])


@gpu
@built
@pytest.mark.parametrize("case", utils.feature_cases(1000), ids=utils.case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_feature_cases(dtype, case):
    """d slope and every other value, each feature combination."""
    check_cuda(H=2, N=1000, D=64, dtype=dtype, **case)


@gpu
@built
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_malformed(dtype):
    """Malformed offsets are clamped: every value is the truth of the clamped offsets."""
    utils.check_malformed(C, "cuda", dtype, N=300, D=64, E=64)


@gpu
@built
@pytest.mark.parametrize("need_dslope", [True, False])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_deterministic_backward(need_dslope, D):
    """Bitwise-identical runs, with the d slope terms and without (on sm_90a: the dk/dv sweep
    and the dq sweep of the Hopper kernels, whose terms are summed over the consumer
    warpgroups in a fixed order)."""
    q, k, v = utils.make_inputs(2, 4, 4097, D, D, dtype=torch.bfloat16, device="cuda")
    slope = utils.rand_slope(4, "cuda")
    s0 = utils.rand_state(2, 4, D, D, "cuda")
    do = torch.randn_like(v)
    dfin = torch.randn_like(s0)
    a = C.bwd(do, dfin, q, k, v, slope, 1.0, s0, None, need_dslope)
    b = C.bwd(do, dfin, q, k, v, slope, 1.0, s0, None, need_dslope)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@gpu
@built
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("varlen", [False, True])
def test_kept_states(D, varlen):
    """Over several segments on sm_90a the forward keeps each segment's incoming state,
    (segments, H, D, E), and the dq sweep starts from them, transposed: dq as from a backward
    that rebuilds them (the same states from another pass: equal up to rounding), the other
    gradients bitwise; every gradient against the float64 truth in test_backward_fixed_slope
    and test_long_segments. A kept tensor of another plan is refused; a single segment keeps
    nothing."""
    N, H = 2000, 2
    cu = torch.tensor([0, 100, 100, 1300, 1301, 2000], dtype=torch.int32, device="cuda") \
        if varlen else None
    B, S = (1, 5) if varlen else (2, 2)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    slope = utils.rand_slope(H, "cuda")
    s0 = utils.rand_state(S, H, D, D, "cuda")
    assert C.fwd(q, k, v, slope, 1.0, s0, cu, False, seg_len=1 << 20)[2].shape[0] == 0
    kept = C.fwd(q, k, v, slope, 1.0, s0, cu, False, seg_len=256)[2]
    if not sm90_kernels():
        pytest.skip("the forward keeps its states on the sm_90a kernels only")
    assert kept.shape[0] > 1 and kept.shape[1:] == (H, D, D)
    with_kept = C.bwd(do, None, q, k, v, slope, 0.7, s0, cu, False, kept, seg_len=256)
    rebuilt = C.bwd(do, None, q, k, v, slope, 0.7, s0, cu, False, None, seg_len=256)
    dq, dq_rebuilt = with_kept[0].float(), rebuilt[0].float()
    # bf16 rounding of either (8 bits): a few 2^-9 of the largest |dq| at most
    assert (dq - dq_rebuilt).abs().max() <= 2e-2 * dq_rebuilt.abs().max()
    for a, b in zip(with_kept[1:], rebuilt[1:]):  # dk, dv, d initial state: another sweep
        assert torch.equal(a, b)
    # and the dq sweep does read them: other kept states, another dq
    other = C.bwd(do, None, q, k, v, slope, 0.7, s0, cu, False, kept + 1, seg_len=256)
    assert not torch.equal(other[0], with_kept[0])
    with pytest.raises(RuntimeError, match="kept states"):
        C.bwd(do, None, q, k, v, slope, 0.7, s0, cu, False, kept, seg_len=128)


@gpu
@built
@pytest.mark.slow
@pytest.mark.parametrize("decay", [True, False])
def test_one_million_tokens(decay):
    """One sequence of 2^20 tokens: the same as the torch block form in float32 (the
    states are float32 across 16K blocks and 1K segments; exponents stay bounded), each head
    against its own size (the strongly decaying head's output is a few % of the other's)."""
    N, H, D = 1 << 20, 2, 64
    q, k, v = utils.make_inputs(1, H, N, D, D, dtype=torch.bfloat16, device="cuda")
    slope = torch.tensor([0.001, 2.0], device="cuda") if decay else None
    o, fs, _ = C.fwd(q, k, v, slope, 1.0, None, None, True)
    ro, rfs, _ = blocks.fwd(q.float(), k.float(), v.float(), slope, 1.0, None, None, True,
                         block=1024)  # 1K Python steps instead of 16K
    def rel(x, r):  # the largest relative error norm over the heads (dim 1)
        return max(((x[:, h].float() - r[:, h]).norm() / r[:, h].norm()).item() for h in range(H))
    assert rel(o, ro) < 1e-2, rel(o, ro)
    assert rel(fs, rfs) < 1e-2, rel(fs, rfs)


@gpu
@built
@pytest.mark.slow
def test_gradients_at_256k_tokens():
    """N = 256K in one sequence, several segments: output, final state, every gradient."""
    utils.check_long_sequence(C)


@gpu
@built
def test_module_training_matches_torch_backend():
    """A short bf16 training run of LightningAttention: the CUDA backend's loss curve is the
    torch backend's (same init, same data)."""
    curves = {}
    for backend in ("cuda", "torch"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 256), la.LightningAttention(256, 2, backend=backend),
            torch.nn.Linear(256, 16)).cuda().to(torch.bfloat16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator(device="cuda").manual_seed(1)
        curves[backend] = []
        for _ in range(30):
            x = torch.randn(4, 512, 16, device="cuda", generator=gen).to(torch.bfloat16)
            target = x.float().cumsum(1) / torch.arange(1, 513, device="cuda").view(1, -1, 1)
            loss = torch.nn.functional.mse_loss(model(x).float(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            curves[backend].append(loss.item())
    cuda, ref = torch.tensor(curves["cuda"]), torch.tensor(curves["torch"])
    assert cuda[-5:].mean() < 0.7 * cuda[:5].mean(), curves
    assert ((cuda - ref).abs() / ref).max() < 0.05, curves


@gpu
@built
@pytest.mark.parametrize("dtype", DTYPES + [torch.float32], ids=str)
def test_decode(dtype):
    B, H, D = 3, 4, 128
    q, k, v = (torch.randn(B, H, D, device="cuda").to(dtype) for _ in range(3))
    state = torch.randn(B, H, D, D, device="cuda")
    slope = utils.rand_slope(H, "cuda")
    ref_state = state.clone()
    ro = blocks.decode(q, k, v, ref_state, slope, 0.7)
    o = C.decode(q, k, v, state, slope, 0.7)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o.float(), ro.float(), rtol=2e-2, atol=2e-2)


@gpu
@built
def test_opcheck():
    q, k, v = utils.make_inputs(1, 2, 130, 64, 64, dtype=torch.bfloat16, device="cuda")
    slope = utils.rand_slope(2, "cuda")
    s0 = utils.rand_state(1, 2, 64, 64, "cuda")
    ops = torch.ops.lightning_attention_C
    torch.library.opcheck(ops.fwd, (q, k, v, slope, 1.0, s0, None, True))
    do = torch.randn_like(v)
    torch.library.opcheck(ops.bwd, (do, None, q, k, v, slope, 1.0, s0, None, True))
