"""Shared test helpers: inputs, the float64 truth, the error rule, the GPU marker.

The error rule (FlashAttention's): a backend's error against the float64 reference is at
most `factor` (2) times the error of the plain PyTorch block form computed in the same
dtype (`blocks.fwd/bwd(..., compute_dtype=dtype)`, the torch backend), plus a tiny absolute
slack.
"""
import contextlib

import pytest
import torch

from lightning_attention import ops, reference
from lightning_attention.kernels import cuda_backend
from lightning_attention.kernels.torch_backend import blocks
from lightning_attention.layout import is_bnhd

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


@contextlib.contextmanager
def poisoned():
    """Every floating tensor that torch.empty allocates from Python (the Python backends'
    outputs), and every output of the C++ ops, starts as NaN: an element a kernel forgets to
    write fails the comparison. Test-only: the package never reads a switch for this."""
    real = torch.empty

    def empty(*args, **kwargs):
        x = real(*args, **kwargs)
        return x.fill_(float("nan")) if x.is_floating_point() else x

    ext = cuda_backend._C
    torch.empty = empty
    if ext is not None:
        ext.set_poison_outputs(True)
    try:
        yield
    finally:
        torch.empty = real
        if ext is not None:
            ext.set_poison_outputs(False)


def randn(*shape, dtype=torch.float32, device="cpu", layout="bhnd", scale=1.0):
    """A random (B, H, N, X) tensor in one of three memory layouts:
    'bhnd' contiguous; 'bnhd' a transposed view of (B, N, H, X) memory; 'strided' a
    non-contiguous slice of a larger tensor (stride(-1) == 1, padded rows)."""
    B, H, N, X = shape
    if layout == "bhnd":
        x = torch.randn(B, H, N, X, device=device)
    elif layout == "bnhd":
        x = torch.randn(B, N, H, X, device=device).transpose(1, 2)
    elif layout == "strided":
        x = torch.randn(B, H + 1, N + 3, X + 16, device=device)[:, 1:, 2:N + 2, 8:X + 8]
    else:
        raise ValueError(layout)
    with torch.no_grad():
        x.mul_(scale)
    return x.to(dtype) if dtype != torch.float32 else x


def make_inputs(B, H, N, D, E, dtype=torch.float32, device="cpu", layout="bhnd"):
    """q, k, v with unit-size rows (scaled so that outputs stay O(1) at any N)."""
    q = randn(B, H, N, D, dtype=dtype, device=device, layout=layout, scale=D ** -0.5)
    k = randn(B, H, N, D, dtype=dtype, device=device, layout=layout, scale=D ** -0.5)
    v = randn(B, H, N, E, dtype=dtype, device=device, layout=layout)
    return q, k, v


def rand_slope(H, device="cpu"):
    """Per-head slopes spanning weak to strong decay."""
    return torch.rand(H, device=device) * 0.5 + 0.01


def rand_state(num, H, D, E, device="cpu"):
    return torch.randn(num, H, D, E, device=device) * 0.1


def f64(x):
    return None if x is None else x.detach().double()


def truth(q, k, v, slope=None, scale=1.0, initial_state=None, cu_seqlens=None, do=None,
          dfinal=None):
    """The float64 reference: (o, final_state) and, with `do`, the gradients
    (dq, dk, dv, d slope, d initial_state) by autograd of the quadratic form."""
    leaves = [f64(x).requires_grad_() if x is not None else None
              for x in (q, k, v, slope, initial_state)]
    o, state = reference.attention_ref(*leaves[:4], scale, leaves[4], cu_seqlens)
    if do is None:
        return o.detach(), state.detach()
    outs, grads = [o], [f64(do)]
    if dfinal is not None:
        outs.append(state)
        grads.append(f64(dfinal))
    wrt = [x for x in leaves if x is not None]
    got = iter(torch.autograd.grad(outs, wrt, grads))
    return o.detach(), state.detach(), [next(got) if x is not None else None for x in leaves]


def max_err(x, ref):
    return (x.detach().double() - ref).abs().max().item() if ref.numel() else 0.0


def assert_close(out, ref, base, name="", factor=2.0, rtol=1e-6, slack=0.0):
    """err(out) <= factor * err(base) + rtol * max|ref| + slack, and out has no NaN/Inf."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (an unwritten element?)"
    err, base_err = max_err(out, ref), max_err(base, ref)
    bound = factor * base_err + rtol * max(ref.abs().max().item() if ref.numel() else 0.0, 1e-3)
    bound += slack
    assert err <= bound, f"{name}: max error {err:.3e} > {factor} x baseline {base_err:.3e} + slack"


EPS = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def dslope_slack(q, k, ref_grads, ref_final, initial_state, dfinal, cu_seqlens, dtype):
    """The extra allowance of d slope, one number per head:
    dL/d log λ = Σ_t t (q_t·dq_t − k_t·dk_t) + state terms cancels heavily, so two correct
    evaluations differ by about eps(dtype) · ||t (|q_t·dq_t| + |k_t·dk_t|)||₂ in a random
    direction, and "2x the baseline's error" alone fails by chance about one time in four.
    Measured on the CPU for the PyTorch baseline (N = 1000, 4097): error / that norm up to
    2.9e-3 in bfloat16, 3.6e-4 in float16, 2.6e-7 in float32. The slack is 4 eps(dtype)
    times the norm plus the state terms' magnitudes."""
    N = q.shape[2]
    t = ops._positions(N, cu_seqlens, q.device).double()
    dq, dk = ref_grads[0], ref_grads[1]
    mag = (f64(q) * dq).sum(-1).abs() + (f64(k) * dk).sum(-1).abs()
    total = ((mag * t) ** 2).sum(dim=(0, 2)).sqrt()
    if initial_state is not None:
        total = total + (f64(initial_state) * ref_grads[4]).abs().sum(dim=(0, 2, 3))
    if dfinal is not None:
        total = total + N * (f64(dfinal) * ref_final).abs().sum(dim=(0, 2, 3))
    return 4 * EPS[dtype] * total.max().item()


def baseline(q, k, v, slope=None, scale=1.0, initial_state=None, cu_seqlens=None, do=None,
             dfinal=None):
    """The plain PyTorch block form in the inputs' dtype: (o, final_state) and, with `do`,
    (dq, dk, dv, d slope, d initial_state): the error yardstick of assert_close."""
    slope32 = None if slope is None else slope.detach().float()
    s0 = None if initial_state is None else initial_state.detach()
    q, k, v = (x.detach() for x in (q, k, v))
    cdt = q.dtype
    o, fs = blocks.fwd(q, k, v, slope32, scale, s0, cu_seqlens, True, compute_dtype=cdt)
    if do is None:
        return o, fs
    dq, dk, dv, ds0, terms = blocks.bwd(do, dfinal, q, k, v, slope32, scale, s0, cu_seqlens,
                                           slope is not None, compute_dtype=cdt)
    dslope = None
    if slope is not None:
        dslope = ops._slope_grad(terms, s0, ds0, fs, dfinal, cu_seqlens)
    return o, fs, [dq, dk, dv, dslope, ds0]


def check_backend(backend, *, B=2, H=3, N=65, D=32, E=48, dtype=torch.float32, device="cpu",
                  layout="bhnd", decay=True, initial_state=False, final_state=False,
                  scale=1.0, cu_seqlens=None, grads=True, factor=2.0):
    """Run lightning_attn on `backend` (outputs poisoned with NaN) and check the output,
    the final state and every gradient against the float64 truth with assert_close."""
    import lightning_attention as la
    q, k, v = make_inputs(B, H, N, D, E, dtype=dtype, device=device, layout=layout)
    slope = rand_slope(H, device) if decay else None
    cu = None
    num = B
    if cu_seqlens is not None:
        cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
        num = len(cu_seqlens) - 1
    s0 = rand_state(num, H, D, E, device) if initial_state else None
    leaves = [x if x is None else x.detach().clone().requires_grad_(grads)
              for x in (q, k, v, slope, s0)]
    do = torch.randn(B, H, N, E, device=device).to(dtype) if grads else None
    dfinal = torch.randn(num, H, D, E, device=device) if grads and final_state else None
    with poisoned():
        out = la.lightning_attn(*leaves[:4], scale=scale, initial_state=leaves[4],
                                output_final_state=final_state, cu_seqlens=cu, backend=backend)
        o, fs = out if final_state else (out, None)
        if grads:
            outs, gs = [o], [do]
            if final_state:
                outs.append(fs)
                gs.append(dfinal)
            torch.autograd.backward(outs, gs)
    assert o.dtype == dtype and is_bnhd(o) == (layout == "bnhd"), "output dtype/layout"
    if grads:
        ref_o, ref_fs, ref_g = truth(q, k, v, slope, scale, s0, cu, do, dfinal)
        base_o, base_fs, base_g = baseline(q, k, v, slope, scale, s0, cu, do, dfinal)
    else:
        ref_o, ref_fs = truth(q, k, v, slope, scale, s0, cu)
        base_o, base_fs = baseline(q, k, v, slope, scale, s0, cu)
    assert_close(o, ref_o, base_o, "o", factor)
    if final_state:
        assert fs.dtype == torch.float32
        assert_close(fs, ref_fs, base_fs, "final_state", factor)
    if grads:
        for name, leaf, r, b in zip(("dq", "dk", "dv", "dslope", "dinitial_state"),
                                    leaves, ref_g, base_g):
            if leaf is None:
                continue
            slack = (dslope_slack(q, k, ref_g, ref_fs, s0, dfinal, cu, dtype)
                     if name == "dslope" else 0.0)
            assert_close(leaf.grad, r, b, name, factor, slack=slack)


def check_state(backend, *, B=2, H=3, N=65, D=32, E=48, dtype=torch.float32, device="cpu",
                layout="bhnd", decay=True, scale=0.7):
    """A backend's state-only pass (lightning_attention/kernels) against the float64 truth: to_end over
    (k, v) is the final state from a zero start, the other direction over (q, do) the
    gradient of the initial state; each bounded by 2x the block form's error (assert_close)."""
    from lightning_attention import dispatch
    q, k, v = make_inputs(B, H, N, D, E, dtype=dtype, device=device, layout=layout)
    slope = rand_slope(H, device) if decay else None
    do = randn(B, H, N, E, dtype=dtype, device=device, layout=layout)
    s0 = torch.zeros(B, H, D, E, device=device)
    _, ref_final, ref_g = truth(q, k, v, slope, scale, s0, do=do)
    _, base_final, base_g = baseline(q, k, v, slope, scale, s0, do=do)
    mod = dispatch.BACKENDS[backend]
    st = mod.state(k, v, slope, 1.0, True)
    assert st.dtype == torch.float32
    assert_close(st, ref_final, base_final, f"{backend} state (k, v)")
    assert_close(mod.state(q, do, slope, scale, False), ref_g[4], base_g[4],
                 f"{backend} state (q, do)")


def check_long_sequence(backend, N=256 * 1024, D=64):
    """One long sequence through a Backend's fwd/bwd (kernel interface), against the
    float64 block form (the quadratic truth is too big), bounded by the PyTorch block form
    in bf16: output, final state and every gradient."""
    torch.manual_seed(0)
    H = 2
    q, k, v = make_inputs(1, H, N, D, D, dtype=torch.bfloat16, device="cuda")
    slope = torch.tensor([0.001, 0.2], device="cuda")
    s0 = rand_state(1, H, D, D, "cuda")
    do = torch.randn(1, H, N, D, device="cuda").to(torch.bfloat16)
    df = torch.randn(1, H, D, D, device="cuda")
    with poisoned():
        o, fs = backend.fwd(q, k, v, slope, 1.0, s0, None, True)
        grads = backend.bwd(do, df, q, k, v, slope, 1.0, s0, None, False)[:4]
    x64 = [x.double() for x in (q, k, v, do)]
    ro, rfs = blocks.fwd(*x64[:3], slope.double(), 1.0, s0.double(), None, True, block=256)
    rg = blocks.bwd(x64[3], df.double(), *x64[:3], slope.double(), 1.0, s0.double(), None,
                       False, block=256)
    bo, bfs = blocks.fwd(q, k, v, slope, 1.0, s0, None, True, compute_dtype=torch.bfloat16)
    bg = blocks.bwd(do, df, q, k, v, slope, 1.0, s0, None, False, compute_dtype=torch.bfloat16)
    assert_close(o, ro, bo, "o")
    assert_close(fs, rfs, bfs, "final_state")
    for name, a, r, b in zip(("dq", "dk", "dv", "dinitial_state"), grads, rg, bg):
        assert_close(a, r, b, name)
