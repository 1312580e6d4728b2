"""The Triton backend against the float64 truth, bounded by 2x the error of the plain
quadratic form in the same dtype (tests/utils.py: check_backend).

CPU: the same kernels in Triton's interpreter (TRITON_INTERPRET=1, set per test; the
kernels pick interpreter or GPU compilation at launch), float32/float16, small shapes;
the multi-segment and varlen cases with the grid run in descending order.
GPU: every dtype, awkward shapes and head dims, N = 256K, determinism, decode in a graph.
"""
import pytest
import torch

import utils
from utils import gpu

triton = pytest.importorskip("triton")

from lightning_attention import ops  # noqa: E402
from lightning_attention.kernels.torch_backend import blocks  # noqa: E402
from lightning_attention.kernels.triton_backend import BACKEND as T  # noqa: E402
from lightning_attention.kernels.triton_backend import _common as TC  # noqa: E402


@pytest.fixture
def seg(monkeypatch):
    """Force a segment length (tokens), so short sequences take the multi-segment path."""
    def set_seg(n):
        monkeypatch.setitem(TC.CONFIG, "seg", n)
    return set_seg


def check(**kw):
    utils.check_backend("triton", **kw)


# ------------------------------------------------------------------ interface, no kernels

def test_unavailable_and_unsupported(monkeypatch):
    q = torch.randn(1, 2, 8, 32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert T.unavailable() == TC.interpreter_problem()  # None where the interpreter works
    assert T.unsupported(q, q, q, None) is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        assert "GPU" in T.unavailable()
    assert "TRITON_INTERPRET" in T.unsupported(q, q, q, None)
    bad = torch.randn(1, 2, 8, 40)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "multiples of 16" in T.unsupported(bad, bad, bad, None)


def test_interpreter_problem(monkeypatch):
    """Triton < 3.8's interpreter takes int() of 1-element arrays, which NumPy may refuse."""
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(triton, "__version__", "3.8.0")
    assert TC.interpreter_problem() is None
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    try:
        int(np.array([0]))
        refused = False
    except TypeError:
        refused = True
    why = TC.interpreter_problem()
    assert (why is not None) == refused
    if refused:
        assert "Triton 3.6.0" in why and "triton>=3.8" in why
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert T.unavailable() == why


def test_segment_plan():
    dev = torch.device("cpu")
    for n, streams in [(1, 1), (1000, 2048), (65536, 32), (1 << 20, 1)]:
        s = TC.plan_segment(n, streams, dev)
        assert s % TC.BT == 0 and 4 * TC.BT <= s <= 8192


# ------------------------------------------------------------------ CPU, interpreter

CPU_FEATURES = [
    # decay, initial, final, scale, layout, seg
    dict(decay=True, initial_state=True, final_state=True, scale=0.7, layout="bhnd", seg=None),
    dict(decay=True, initial_state=True, final_state=True, scale=1.0, layout="bhnd", seg=64),
    dict(decay=False, initial_state=False, final_state=True, scale=1.0, layout="bnhd", seg=64),
    dict(decay=False, initial_state=True, final_state=False, scale=0.5, layout="strided", seg=None),
    dict(decay=True, initial_state=False, final_state=False, scale=1.0, layout="strided", seg=64),
    dict(decay=True, initial_state=True, final_state=True, scale=2.0, layout="bnhd", seg=128),
]


@pytest.mark.parametrize("f", CPU_FEATURES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_cpu_features(interp, descending, seg, f):
    f = dict(f)
    seg(f.pop("seg"))
    check(B=2, H=2, N=200, D=32, E=48, device=interp, **f)


@pytest.mark.parametrize("N", [1, 63, 65])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cpu_shapes(interp, N, dtype):
    check(B=1, H=2, N=N, D=16, E=32, dtype=dtype, device=interp,
                        initial_state=True, final_state=True)


@pytest.mark.parametrize("D,E", [(16, 256), (48, 96), (192, 64)])
def test_cpu_head_dims(interp, seg, D, E):
    seg(64)  # E = 256 also takes the split-V dK path
    check(B=1, H=1, N=130, D=D, E=E, device=interp,
                        initial_state=True, final_state=True)


@pytest.mark.parametrize("case", utils.feature_cases(100), ids=utils.case_id)
def test_cpu_feature_cases(interp, case):
    """d slope and every other value, each feature combination (float32)."""
    check(H=2, N=100, D=16, E=16, device=interp, **case)


@pytest.mark.parametrize("varlen", [False, True])
def test_cpu_kept_states(interp, seg, varlen):
    """Over several segments the forward keeps each segment's incoming state and the
    backward's dq pass starts from them: the gradients are those of a backward that
    rebuilds the states (bitwise: the same pass computed them) and the float64 truth's, with
    a fixed slope (a slope that requires grad rebuilds them with their moments)."""
    seg(64)
    cu = [0, 40, 40, 230, 300] if varlen else None
    B = 1 if varlen else 2
    q, k, v = utils.make_inputs(B, 2, 300, 32, 16, device=interp)
    slope = utils.rand_slope(2, interp)
    s0 = utils.rand_state(4 if varlen else B, 2, 32, 16, interp)
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    do, df = torch.randn_like(v), torch.randn_like(s0)
    kept = T.fwd(q, k, v, slope, 0.8, s0, cut, True)[2]
    assert kept.shape[0] > 0 and kept.shape[1:] == (2, 32, 16)
    with_kept = T.bwd(do, df, q, k, v, slope, 0.8, s0, cut, False, kept)
    rebuilt = T.bwd(do, df, q, k, v, slope, 0.8, s0, cut, False, None)
    for a, b in zip(with_kept, rebuilt):
        assert torch.equal(a, b)
    # and the dq pass does read them: other kept states, another dq
    other = T.bwd(do, df, q, k, v, slope, 0.8, s0, cut, False, kept + 1)
    assert not torch.equal(other[0], with_kept[0])
    check(B=B, H=2, N=300, D=32, E=16, device=interp, cu_seqlens=cu, initial_state=True,
          final_state=True, scale=0.8, slope_grad=False)


@pytest.mark.parametrize("varlen", [False, True])
def test_cpu_decay_horizon(interp, seg, monkeypatch, varlen):
    """Pass 1 stopping at each head's decay horizon (the default; LIGHTNING_ATTENTION_HORIZON=0
    turns it off): heads without decay and with weak, medium and strong decay (λ = e^-3: a
    horizon of 44 tokens, inside a 64-token segment of 16-token float32 blocks), both
    directions of pass 1, packed sequences with an empty one, against the float64 truth,
    fixed and learnable slope (the moments' pass 1 stops at its own horizon, 222 / 190 times
    the state's); the forward's output and final states within float32 rounding of those with
    the switch off; a NaN past the horizon that only the skip keeps from the neighbouring
    segment, in each pass 1; and a head with a horizon of one token (decay="steep")."""
    seg(64)
    cu = [0, 40, 40, 230, 300] if varlen else None
    B = 1 if varlen else 2
    q, k, v = utils.make_inputs(B, 4, 300, 32, 16, device=interp)
    slope = utils.make_slope("mixed", 4, interp)
    s0 = utils.rand_state(4 if varlen else B, 4, 32, 16, interp)
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    monkeypatch.setenv("LIGHTNING_ATTENTION_HORIZON", "0")
    off = T.fwd(q, k, v, slope, 0.8, s0, cut, True)
    monkeypatch.setenv("LIGHTNING_ATTENTION_HORIZON", "1")
    on = T.fwd(q, k, v, slope, 0.8, s0, cut, True)
    for a, b in zip(on[:2], off[:2]):  # the output and the final states
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-30)
    if not varlen:
        # the skip happens, in both directions: a NaN past the strong head's horizon (a key
        # 58 tokens before its segment's last token; a dO 56 after the next segment's first,
        # in its fourth 16-token block) reaches the neighbouring segment with the switch off
        k[0, 3, 5] = float("nan")
        do = torch.randn_like(v)
        do[0, 3, 120] = float("nan")
        for switch in ("0", "1"):
            monkeypatch.setenv("LIGHTNING_ATTENTION_HORIZON", switch)
            o = T.fwd(q, k, v, slope, 0.8, None, None, False)[0]
            dk = T.bwd(do, None, q, k.nan_to_num(), v, slope, 0.8, None, None, False)[1]
            assert torch.isfinite(o[0, 3, 64:128]).all() == (switch == "1")
            assert torch.isfinite(dk[0, 3, :64]).all() == (switch == "1")
            # the moments' pass 1 (the dq sweep with a learnable slope): the NaN is 58 tokens
            # before the segment's end, past the moment horizon of a head with λ = e^-200
            steep = utils.make_slope("steep", 4, interp)
            dq = T.bwd(torch.randn_like(v), None, q, k, v, steep, 0.8, None, None, True)[0]
            assert torch.isfinite(dq[0, 3, 64:128]).all() == (switch == "1")
    for slope_grad in (False, True):
        check(B=B, H=4, N=300, D=32, E=16, device=interp, decay="mixed", cu_seqlens=cu,
              initial_state=True, final_state=True, scale=0.8, slope_grad=slope_grad)
    if not varlen:
        check(B=B, H=4, N=300, D=32, E=16, device=interp, decay="steep", initial_state=True,
              final_state=True, scale=0.8, slope_grad=True)


@pytest.mark.parametrize("seg_len", [None, 64])
def test_cpu_varlen(interp, descending, seg, seg_len):
    seg(seg_len)
    # an empty sequence, a one-block one, one over several segments, a partial block
    check(B=1, H=2, N=300, D=32, E=16, device=interp,
                        cu_seqlens=[0, 40, 40, 230, 300], initial_state=True,
                        final_state=True, scale=0.8)


@pytest.mark.parametrize("N,seg_len", [(1, None), (63, None), (200, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("decay", [True, False])
def test_cpu_state_pass(interp, seg, N, seg_len, dtype, decay):
    """The state-only pass (sequence parallelism): several segments at N = 200."""
    if seg_len:
        seg(seg_len)
    utils.check_state("triton", N=N, dtype=dtype, decay=decay, layout="bnhd")


def test_cpu_malformed_cu_seqlens(interp, descending):
    """Values out of range are clamped: every value is the truth of the clamped offsets."""
    utils.check_malformed(T, interp)


def test_cpu_bwd_returns_dinitial(interp):
    """bwd returns d initial_state whenever initial_state is given (ops.py's d slope)."""
    q, k, v = utils.make_inputs(1, 2, 70, 16, 32)
    slope = utils.rand_slope(2)
    s0 = utils.rand_state(1, 2, 16, 32)
    do = torch.randn(1, 2, 70, 32)
    _, _, _, ds0, terms = T.bwd(do, None, q, k, v, slope, 1.0, s0, None, False)
    assert terms.numel() == 0  # no terms without need_dslope
    grads = utils.truth(q, k, v, slope, 1.0, s0, None, do)[2]
    base = utils.baseline(q, k, v, slope, 1.0, s0, None, do)[2]
    utils.assert_close(ds0, grads[4], base[4])


def test_cpu_empty(interp):
    """Empty inputs are answered by the op layer (ops.py), before any backend."""
    q, k, v = utils.make_inputs(2, 2, 0, 16, 32)
    s0 = utils.rand_state(2, 2, 16, 32)
    o, fs, kept = ops.fwd(q, k, v, None, s0, None, 1.0, True, "triton")
    assert o.shape == (2, 2, 0, 32) and torch.equal(fs, s0)
    df = torch.randn_like(s0)
    dq, dk, dv, ds0, terms = ops.bwd(torch.empty_like(o), df, q, k, v, None, s0, None, 1.0, True,
                                     kept, "triton")
    assert torch.equal(ds0, df) and dq.shape == q.shape and terms.shape == (2, 2, 0)


def _check_decode(device, dtype, D, E, decay):
    B, H = 3, 2
    q, k, v = (torch.randn(B, H, X, device=device).to(dtype) for X in (D, D, E))
    slope = utils.rand_slope(H, device) if decay else None
    state = utils.rand_state(B, H, D, E, device)
    ref_state = state.double().clone()
    o = T.decode(q, k, v, state, slope, 0.9)
    ro = blocks.decode(q.double(), k.double(), v.double(), ref_state,
                          None if slope is None else slope.double(), 0.9)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert o.dtype == dtype and o.shape == (B, H, E)
    torch.testing.assert_close(state.double(), ref_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o.double(), ro.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("D,E,decay", [(16, 32, True), (48, 256, False)])
def test_cpu_decode(interp, D, E, decay):
    _check_decode(interp, torch.float32, D, E, decay)


def test_cpu_decode_steps(interp):
    utils.check_decode_steps(T.decode)


def test_cpu_deterministic(interp, seg):
    """Two backward calls, bitwise equal. The interpreter runs the programs one after another,
    so the order of additions cannot differ here (test_gpu_deterministic checks that); what
    can is a read of workspace memory that no program wrote: poisoned, it gives NaN, and NaN
    is not equal to itself."""
    seg(64)
    q, k, v = utils.make_inputs(1, 2, 200, 16, 256)
    slope = utils.rand_slope(2)
    s0 = utils.rand_state(1, 2, 16, 256)
    do, df = torch.randn(1, 2, 200, 256), torch.randn(1, 2, 16, 256)
    with utils.poisoned():
        a = T.bwd(do, df, q, k, v, slope, 1.0, s0, None, True)
        b = T.bwd(do, df, q, k, v, slope, 1.0, s0, None, True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ GPU

GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("N", [1, 63, 65, 1000, 4097])
def test_gpu_shapes(dtype, N):
    check(B=2, H=3, N=N, D=64, E=128, dtype=dtype, device="cuda",
                        initial_state=True, final_state=True, scale=0.9)


HEAD_DIMS = [(16, 16), (48, 96), (64, 64), (96, 48), (128, 128), (192, 256), (256, 256),
             (256, 16), (16, 192)]


@gpu
@pytest.mark.parametrize("dtype,D,E", [(torch.bfloat16, D, E) for D, E in HEAD_DIMS]
                         + [(dt, D, E) for dt in (torch.float16, torch.float32)
                            for D, E in [(48, 96), (256, 16), (192, 256)]])
def test_gpu_head_dims(dtype, D, E):
    check(B=1, H=2, N=1000, D=D, E=E, dtype=dtype, device="cuda",
          initial_state=True, final_state=True)


# every feature set in bfloat16 and float32 (a float32 case took 2-3 minutes on an H200 with
# 64-token blocks, most of it compiling; ~16 s with float32's 16-token ones, block_tokens)
@gpu
@pytest.mark.parametrize("dtype,f", [(dt, f) for dt in (torch.bfloat16, torch.float32)
                                     for f in CPU_FEATURES],
                         ids=lambda x: "-".join(f"{k}={v}" for k, v in x.items())
                         if isinstance(x, dict) else str(x).replace("torch.", ""))
def test_gpu_features(seg, f, dtype):
    f = dict(f)
    s = f.pop("seg")
    seg(s if s is None else 4 * s)
    check(B=2, H=3, N=4097, D=128, E=128, dtype=dtype, device="cuda", **f)


@gpu
@pytest.mark.parametrize("case", utils.feature_cases(1000), ids=utils.case_id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_feature_cases(dtype, case):
    check(H=2, N=1000, D=64, E=64, dtype=dtype, device="cuda", **case)


@gpu
def test_gpu_malformed_cu_seqlens():
    utils.check_malformed(T, "cuda", torch.bfloat16, N=300, D=64, E=64)


@gpu
@pytest.mark.parametrize("seg_len", [None, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_varlen(seg, seg_len, dtype):
    seg(seg_len)
    check(B=1, H=4, N=5000, D=64, E=64, dtype=dtype, device="cuda",
                        cu_seqlens=[0, 1, 1, 1000, 1063, 4097, 5000], initial_state=True,
                        final_state=True)


@gpu
@pytest.mark.parametrize("N,seg_len", [(4097, None), (6000, 256)])  # 24 segments, the last partial
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_state_pass(seg, N, seg_len, dtype):
    if seg_len:
        seg(seg_len)
    utils.check_state("triton", N=N, D=128, E=128, dtype=dtype, device="cuda", H=2, B=1)


@gpu
@pytest.mark.slow
def test_gpu_long_256k():
    """N = 256K, many segments: output, final state and every gradient."""
    utils.check_long_sequence(T)


@gpu
@pytest.mark.parametrize("E", [128, 256])
def test_gpu_deterministic(E):
    """Repeated backward runs give bitwise-identical results (no order-dependent atomics)."""
    q, k, v = utils.make_inputs(2, 4, 8193, 128, E, dtype=torch.bfloat16, device="cuda")
    slope = utils.rand_slope(4, "cuda")
    s0 = utils.rand_state(2, 4, 128, E, "cuda")
    do = torch.randn_like(v)
    df = torch.randn_like(s0)
    a = T.bwd(do, df, q, k, v, slope, 1.0, s0, None, True)
    for _ in range(3):
        b = T.bwd(do, df, q, k, v, slope, 1.0, s0, None, True)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_decode(dtype):
    _check_decode("cuda", dtype, 128, 128, True)
    _check_decode("cuda", dtype, 48, 256, False)


@gpu
def test_gpu_decode_cuda_graph():
    B, H, D, E = 4, 8, 128, 128
    q, k, v = (torch.randn(B, H, X, device="cuda", dtype=torch.bfloat16) for X in (D, D, E))
    slope = utils.rand_slope(H, "cuda")
    state = utils.rand_state(B, H, D, E, "cuda")
    T.decode(q, k, v, state.clone(), slope, 1.0)  # compile outside the capture
    start = state.clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o = T.decode(q, k, v, state, slope, 1.0)
    state.copy_(start)
    g.replay()
    ref_state = start.clone()
    ro = blocks.decode(q, k, v, ref_state, slope, 1.0)
    torch.cuda.synchronize()
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o.float(), ro.float(), rtol=2e-2, atol=2e-2)



# ------------------------------------------------------------------ what the interpreter refuses

def test_interpreter_refuses_bfloat16(interp):
    """The interpreter's bfloat16 dot is wrong: the backend declines bf16 CPU tensors and the
    automatic choice falls back to the torch backend (float32 still goes to Triton)."""
    from lightning_attention import dispatch
    q = torch.randn(1, 2, 8, 32, dtype=torch.bfloat16)
    assert "bfloat16" in T.unsupported(q, q, q, None)
    assert dispatch.select(None, q, q, q).name == "torch"
    assert dispatch.select(None, q.float(), q.float(), q.float()).name == "triton"


def test_interpreter_without_numpy_names_the_install(interp, monkeypatch):
    """Triton's interpreter imports numpy: without it the reason is that import error and
    its fix, not a hint to set TRITON_INTERPRET=1 (which is set)."""
    import sys

    import lightning_attention as la
    import lightning_attention.kernels.triton_backend as TB
    monkeypatch.setitem(sys.modules, "numpy", None)
    monkeypatch.delitem(sys.modules, "triton.runtime.interpreter", raising=False)
    TB._interpreter_import_error.cache_clear()
    try:
        why = T.unavailable()
        assert "pip install numpy" in why and "TRITON_INTERPRET" not in why, why
        q = torch.randn(1, 2, 8, 32)
        with pytest.raises(RuntimeError, match="pip install numpy"):
            la.lightning_attn(q, q, q, backend="triton")
    finally:
        TB._interpreter_import_error.cache_clear()


# ------------------------------------------------------ compiled for a GPU, from the CPU

_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                 torch.int32: "*i32", torch.int64: "*i64", torch.uint8: "*u8", torch.bool: "*i1"}


def _compile_for_sm90(fn, args, kw):
    """Compiles one recorded launch of a kernel for sm_90 (no GPU needed): pointer types from
    the arguments' dtypes, keyword arguments that name parameters as constexprs."""
    import inspect
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = list(inspect.signature(fn).parameters)
    values = dict(zip(names, args))
    sig, const = {}, {}
    for i, n in enumerate(names):
        if n in kw:
            sig[n] = "constexpr"
            const[(i,)] = False if n == "INTERP" else kw[n]
        elif isinstance(values[n], torch.Tensor):
            sig[n] = _TRITON_TYPES[values[n].dtype]
        elif isinstance(values[n], float):
            sig[n] = "fp32"
        else:
            sig[n] = "i64" if abs(values[n]) >= 2 ** 31 else "i32"
    opts = {o: kw[o] for o in ("num_warps", "num_stages") if o in kw}
    triton.compile(ASTSource(fn=triton.jit(fn), signature=sig, constexprs=const),
                   target=GPUTarget("cuda", 90, 32), options=opts)


def _workload(name):
    """A call of the backend on small CPU float16 inputs that launches the kernels of `name`."""
    q, k, v = utils.make_inputs(1, 2, 150, 64, 64, dtype=torch.float16)
    slope = utils.rand_slope(2)
    s0 = utils.rand_state(1, 2, 64, 64)
    cu = torch.tensor([0, 0, 70, 71, 150], dtype=torch.int32)
    if name == "dslope":
        T.bwd(torch.randn_like(v), torch.randn_like(s0), q, k, v, slope, 1.0, s0, None, True)
    elif name == "varlen":
        s4 = utils.rand_state(4, 2, 64, 64)
        T.fwd(q, k, v, slope, 1.0, s4, cu, True)
        T.bwd(torch.randn_like(v), torch.randn_like(s4), q, k, v, None, 0.5, s4, cu, False)
    elif name == "horizon":  # (LIGHTNING_ATTENTION_HORIZON=1; the others with it off)
        T.fwd(q, k, v, slope, 1.0, s0, None, True)
        for need_dslope in (False, True):
            T.bwd(torch.randn_like(v), torch.randn_like(s0), q, k, v, slope, 1.0, s0, None,
                  need_dslope)
    elif name == "serving":
        pool = torch.randn(6, 2, 64, 64)
        slots = torch.tensor([4, -1, 0, 2], dtype=torch.int32)
        T.pool_prefill(q, k, v, slope, 1.0, cu, pool, slots, torch.tensor([True, True, False, True]))
        T.pool_decode(q[0, :, :4].transpose(0, 1).contiguous(), k[0, :, :4].transpose(0, 1).contiguous(),
                      v[0, :, :4].transpose(0, 1).contiguous(), pool, slots, slope, 1.0)


@pytest.mark.parametrize("seg_len", [None, 64])
@pytest.mark.parametrize("workload", ["dslope", "varlen", "horizon", "serving"])
def test_kernels_compile_for_a_gpu(monkeypatch, seg, seg_len, workload):
    """Every kernel launch of a call (d slope backward; packed sequences with states, no
    decay; pass 1 at the decay horizon; pooled prefill and decode), with one segment and
    several, compiles for sm_90. The
    interpreter runs only the branches it takes, so a type error in a branch that a launch
    never takes (a 16-bit placeholder loaded where float32 is carried) passes every CPU test
    and fails on the GPU."""
    if TC.interpreter_problem() is not None:
        pytest.skip(TC.interpreter_problem())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LIGHTNING_ATTENTION_HORIZON", "1" if workload == "horizon" else "0")
    if seg_len:
        seg(seg_len)
    launches, launch = [], TC._launch
    monkeypatch.setattr(TC, "_launch", lambda k, grid, args, kw: (
        launches.append((k.fn, args, kw)), launch(k, grid, args, kw))[1])
    _workload(workload)
    assert launches
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton.jit gives compiled kernels again
    compiled = set()
    for fn, args, kw in launches:
        key = (fn.__name__, tuple(sorted((n, v) for n, v in kw.items() if not isinstance(v, torch.Tensor))),
               tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args))
        if key not in compiled:
            compiled.add(key)
            _compile_for_sm90(fn, args, kw)
