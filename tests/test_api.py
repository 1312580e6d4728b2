"""The public API on the CPU: errors, dispatch, slopes, the custom ops under
opcheck and torch.compile."""
import os
import subprocess
import sys

import pytest
import torch

import lightning_attention as la
from lightning_attention import dispatch, ops
from utils import gpu, make_inputs, rand_slope, rand_state


def _qkv(B=1, H=2, N=8, D=16, E=32, dtype=torch.float32):
    return make_inputs(B, H, N, D, E, dtype=dtype)


def _raises(exc, match, *args, **kwargs):
    with pytest.raises(exc, match=match):
        la.lightning_attn(*args, backend="torch", **kwargs)


def test_shape_errors_name_the_argument():
    q, k, v = _qkv()
    _raises(ValueError, r"q must have rank 4", q[0], k, v)
    _raises(ValueError, r"k must have the same N as q \(got 7 vs 8\)", q, k[:, :, :7], v)
    _raises(ValueError, r"v must have the same B as q", q, k, torch.cat([v, v]))
    _raises(ValueError, r"k must have the same H as q", q, k[:, :1], v)
    _raises(ValueError, r"k must have the same D as q \(got 32 vs 16\)", q, v, v)
    q2, k2, v2 = make_inputs(1, 2, 8, 20, 32)
    _raises(ValueError, r"D \(q.shape\[-1\]\) must be a multiple of 16 .* \(got 20\)", q2, k2, v2)
    q3, k3, v3 = make_inputs(1, 2, 8, 16, 272)
    _raises(ValueError, r"E \(v.shape\[-1\]\) must be a multiple of 16", q3, k3, v3)
    qt = torch.randn(1, 2, 16, 8).transpose(-1, -2)
    _raises(ValueError, r"q must have stride\(-1\) == 1", qt, k, v)


def test_dtype_and_device_errors():
    q, k, v = _qkv()
    _raises(TypeError, r"k must have the same dtype as q", q, k.half(), v)
    _raises(TypeError, r"q must be one of float16, bfloat16, float32", q.int(), k.int(), v.int())
    _raises(ValueError, r"v must be on the same device as q", q, k, v.to("meta"))


def test_slope_state_and_cu_seqlens_errors():
    q, k, v = _qkv()
    _raises(ValueError, r"slope must have shape \(H,\) = \(2,\) \(got \(3,\)\)", q, k, v, torch.rand(3))
    _raises(TypeError, r"slope must be a float tensor", q, k, v, torch.ones(2, dtype=torch.int32))
    _raises(ValueError, r"slope must be finite and >= 0", q, k, v, torch.tensor([0.1, -0.1]))
    _raises(ValueError, r"slope must be finite and >= 0", q, k, v, torch.tensor([0.1, float("nan")]))
    _raises(ValueError, r"initial_state \(B, H, D, E\) must have shape \(1, 2, 16, 32\)",
            q, k, v, initial_state=torch.zeros(1, 2, 32, 16))
    _raises(TypeError, r"initial_state .* must be torch.float32 \(got torch.float16\)",
            q, k, v, initial_state=torch.zeros(1, 2, 16, 32, dtype=torch.half))
    qb, kb, vb = _qkv(B=2)
    _raises(ValueError, r"with cu_seqlens, q must have B == 1 \(got B = 2\)",
            qb, kb, vb, cu_seqlens=torch.tensor([0, 8]))
    _raises(TypeError, r"cu_seqlens must be int32 or int64 \(got torch.float32\)",
            q, k, v, cu_seqlens=torch.tensor([0.0, 8.0]))
    for bad in ([1, 8], [0, 5, 3, 8], [0, 4, 7]):
        _raises(ValueError, r"cu_seqlens must start at 0, be non-decreasing and end at N = 8",
                q, k, v, cu_seqlens=torch.tensor(bad))
    _raises(ValueError, r"initial_state \(num_seqs, H, D, E\) must have shape \(2, 2, 16, 32\)",
            q, k, v, cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.zeros(1, 2, 16, 32))


def test_decode_errors():
    q, k, v = torch.randn(2, 3, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=r"state \(B, H, D, E\) must have shape \(2, 3, 16, 32\)"):
        la.lightning_attn_decode(q, k, v, torch.zeros(2, 3, 32, 16))
    with pytest.raises(ValueError, match=r"state must be contiguous"):
        la.lightning_attn_decode(q, k, v, torch.zeros(2, 3, 32, 16).transpose(-1, -2))
    with pytest.raises(ValueError, match=r"q must have rank 3"):
        la.lightning_attn_decode(q[None], k, v, torch.zeros(2, 3, 16, 32))
    for bad in ([0.1, 0.2, -0.1], [0.1, float("nan"), 0.2], [float("inf"), 0.1, 0.2]):
        with pytest.raises(ValueError, match=r"slope must be finite and >= 0"):
            la.lightning_attn_decode(q, k, v, torch.zeros(2, 3, 16, 32), torch.tensor(bad))


def test_backend_errors_and_selection(monkeypatch):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"backend must be one of"):
        la.lightning_attn(q, k, v, backend="nope")
    if dispatch.report()["cuda"] is not None:  # no GPU / no extension here: say how to fix it
        with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot serve this call: .*to fix"):
            la.lightning_attn(q, k, v, backend="cuda")
    assert dispatch.select(None, q, k, v).name in ("torch", "triton")
    monkeypatch.setenv(dispatch.ENV_BACKEND, "torch")
    assert dispatch.select(None, q, k, v).name == "torch"
    report = la.backends()
    assert set(report) == {"cuda", "triton", "torch"} and report["torch"] is None


def test_nan_stays_in_its_batch_entry():
    q, k, v = _qkv(B=3)
    q[1, 0, 3, 0] = float("nan")
    o = la.lightning_attn(q, k, v, rand_slope(2), backend="torch")
    assert torch.isnan(o[1, 0, 3:]).all(dim=-1).any()
    assert torch.isfinite(o[0]).all() and torch.isfinite(o[2]).all() and torch.isfinite(o[1, 1]).all()


def test_build_slopes():
    s = la.build_slopes(8)
    torch.testing.assert_close(s, torch.tensor([2.0 ** (-(i + 1)) for i in range(8)]))
    s12 = la.build_slopes(12)  # ALiBi's interleave: the 8 of H=8, then every other of H=16
    torch.testing.assert_close(s12[:8], s)
    torch.testing.assert_close(s12[8:], torch.tensor([2.0 ** (-0.5 * (2 * i + 1)) for i in range(4)]))
    torch.testing.assert_close(la.build_slopes(8, 0, 4), s * (1 + 1e-5))
    torch.testing.assert_close(la.build_slopes(8, 3, 4), s * 1e-5)
    assert la.build_slopes(4).dtype == torch.float32


def _op_args(with_grad):
    q, k, v = _qkv(N=70)
    slope, s0 = rand_slope(2), rand_state(1, 2, 16, 32)
    if with_grad:
        q, k, v, slope, s0 = (x.requires_grad_() for x in (q, k, v, slope, s0))
    return (q, k, v, slope, s0, None, 0.5, True, "torch")


@pytest.mark.parametrize("with_grad", [False, True])
def test_opcheck_fwd(with_grad):
    torch.library.opcheck(ops.fwd, _op_args(with_grad))


def test_opcheck_bwd_and_decode():
    q, k, v, slope, s0, cu, scale, _, name = _op_args(False)
    do = torch.randn(1, 2, 70, 32)
    torch.library.opcheck(ops.bwd, (do, torch.randn_like(s0), q, k, v, slope, s0, cu, scale,
                                    True, None, name))
    qd, kd, vd = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    torch.library.opcheck(ops.decode, (qd, kd, vd, s0.clone(), slope, scale, name))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    q, k, v = make_inputs(2, 2, 70, 16, 32)
    slope = rand_slope(2)

    def f(q, k, v, s0):
        o, state = la.lightning_attn(q, k, v, slope, initial_state=s0, output_final_state=True)
        return (o * o).sum() + state.sum()

    s0 = rand_state(2, 2, 16, 32)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, s0)]
    ref = [x.clone().requires_grad_() for x in (q, k, v, s0)]
    got = torch.compile(f, fullgraph=True, backend=compiler)(*leaves)
    want = f(*ref)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad, b.grad)


def test_value_checks_skip_gpu_without_debug(monkeypatch):
    from lightning_attention import checks
    monkeypatch.delenv("LIGHTNING_ATTENTION_DEBUG", raising=False)
    assert checks.values_checked(torch.zeros(1))
    assert not checks.values_checked(torch.zeros(1, device="meta"))
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    assert checks.values_checked(torch.zeros(1, device="meta"))


@gpu
def test_value_checks_on_gpu_with_debug(monkeypatch):
    """LIGHTNING_ATTENTION_DEBUG=1 checks values of GPU tensors; without it they pass."""
    q, k, v = (x.cuda() for x in _qkv())
    bad_slope = torch.tensor([0.1, -0.1], device="cuda")
    bad_cu = torch.tensor([0, 5, 3, 8], device="cuda")
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    with pytest.raises(ValueError, match=r"slope must be finite and >= 0"):
        la.lightning_attn(q, k, v, bad_slope)
    with pytest.raises(ValueError, match=r"cu_seqlens must start at 0"):
        la.lightning_attn(q, k, v, cu_seqlens=bad_cu)
    with pytest.raises(ValueError, match=r"slope must be finite and >= 0"):
        la.lightning_attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0],
                                 torch.zeros(1, 2, 16, 32, device="cuda"), bad_slope)
    monkeypatch.delenv("LIGHTNING_ATTENTION_DEBUG")
    la.lightning_attn(q, k, v, bad_slope)
    la.lightning_attn(q, k, v, cu_seqlens=bad_cu)


@gpu
def test_decode_is_capturable_in_a_cuda_graph(monkeypatch):
    """Auto backend, debug value checks on: still no host sync while capturing."""
    monkeypatch.setenv("LIGHTNING_ATTENTION_DEBUG", "1")
    B, H, D, E = 4, 8, 64, 64
    q, k, v = (torch.randn(B, H, X, device="cuda", dtype=torch.bfloat16) for X in (D, D, E))
    slope = la.build_slopes(H, device="cuda")
    state = torch.randn(B, H, D, E, device="cuda")
    start = state.clone()
    la.lightning_attn_decode(q, k, v, state.clone(), slope)  # warm up (compiles kernels)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o = la.lightning_attn_decode(q, k, v, state, slope)
    state.copy_(start)
    graph.replay()
    ref_state = start.clone()
    ref = la.lightning_attn_decode(q, k, v, ref_state, slope, backend="torch")
    torch.testing.assert_close(o.float(), ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, ref_state, rtol=1e-3, atol=1e-3)


def test_hint_names_what_works_when_no_install_helps(monkeypatch):
    """A built extension on a machine without a GPU, or tensors it cannot take: the message
    names a backend that serves the call, never the reinstall command."""
    from lightning_attention.kernels import cuda_backend as cuda
    q, k, v = _qkv()
    monkeypatch.setitem(dispatch.BACKENDS, "cuda", cuda.BACKEND._replace(unavailable=lambda: None))
    with pytest.raises(RuntimeError, match=r"need CUDA tensors \(got cpu tensors\); to fix: pass "
                                           r"backend='(torch|triton)'") as e:
        la.lightning_attn(q, k, v, backend="cuda")
    assert "pip install" not in str(e.value)


def test_missing_extension_says_so_plainly():
    """Without lightning_attention._C, la.backends() says it is not built and gives the one
    command that builds it, not the import machinery's circular-import message."""
    code = ("import sys; sys.modules['lightning_attention._C'] = None\n"
            "import lightning_attention as la; print(la.backends()['cuda'])")
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=root)).stdout
    from lightning_attention.kernels import cuda_backend as cuda
    assert "is not built" in out and cuda.REINSTALL in out, out
    assert "circular" not in out and "partially initialized" not in out, out


def test_state_pass_falls_back_to_another_backend():
    """The CUDA backend has no state-only pass of its own: the dispatcher takes the next
    backend's that can serve the tensors (no backend imports another)."""
    a, b = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 32)
    cuda = dispatch.BACKENDS["cuda"]
    assert cuda.state is None
    assert dispatch.state_pass(cuda, a, b) is dispatch.BACKENDS["torch"].state


def test_every_submodule_is_a_module():
    """No name shadows a submodule: `import lightning_attention.X.Y` and attribute access
    give the same module, never a function re-exported under its name."""
    import importlib
    import pkgutil
    for info in pkgutil.walk_packages(la.__path__, "lightning_attention."):
        mod = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is mod, info.name
