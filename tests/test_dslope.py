"""d slope from 16-bit inputs stays within 1% of the float64 truth at every length: the
direct form (docs/DSLOPE.md) adds terms of the size of the answer, so rounding is not
amplified by N as it was by the identity Σ_t t (q_t·dq_t − k_t·dk_t).

The measure (issue 13): max_h |g − g64| / max_h |g64| (utils.dslope_error), g64 being d slope
of the same 16-bit inputs in float64. The truth is the torch backend in float64 (its block
form: O(N) memory at any length), itself checked against finite differences for every
feature combination in tests/test_gradcheck.py; the quadratic form (utils.truth) would need
O(N²) work at 64K tokens.
"""
import pytest
import torch

import lightning_attention as la
from lightning_attention import dispatch
from utils import dslope_error, gpu, make_inputs

BOUND = 0.01


def alibi(H, device="cpu"):
    """ALiBi's slopes 2^(−8(h+1)/H): windows of a few to a few hundred tokens."""
    return torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)], device=device)


def _inputs(N, H, D, dtype, device):
    torch.manual_seed(0)
    q, k, v = make_inputs(1, H, N, D, D, dtype=dtype, device=device)
    do = torch.randn(1, H, N, D, device=device).to(dtype)
    return q, k, v, do


def _dslope(backend, q, k, v, slope, do):
    s = slope.clone().requires_grad_()
    la.lightning_attn(q, k, v, s, backend=backend).backward(do)
    return s.grad.double()


def _error(backend, N, H, D, dtype, slope):
    q, k, v, do = _inputs(N, H, D, dtype, slope.device)
    g = _dslope(backend, q, k, v, slope, do)
    g64 = _dslope("torch", *(x.double() for x in (q, k, v)), slope.double(), do.double())
    return dslope_error(g, g64)


#: Triton's terms with float32 operands split into two 16-bit parts: only float32 sums round.
SPLIT_BOUND = 1e-4


@pytest.mark.parametrize("N", [256, 2048])
def test_interpreter_float16(interp, N):
    """Triton's kernels in the CPU interpreter, float16 (rounded as on a GPU). Slopes 2^-3
    and 2^-6; the identity form was 0.08% off at N = 256 and 3.7% at 2048, the direct form
    with its weighted operands and S rounded to float16 once 0.04% and 0.1%, and with them
    split into hi + lo 5e-8 and 1e-6: SPLIT_BOUND, not the 1% target, so that an operand
    rounded once fails here."""
    err = _error("triton", N, 2, 32, torch.float16, torch.tensor([2.0 ** -3, 2.0 ** -6]))
    assert err <= SPLIT_BOUND, f"N={N}: d slope relative error {err:.2e} > {SPLIT_BOUND}"


@gpu
@pytest.mark.parametrize("N", [1024, 16384, 65536])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", sorted(dispatch.BACKENDS))
def test_gpu_16bit(backend, dtype, N):
    """Every backend on the GPU, H = 4, D = E = 64, ALiBi slopes, a random do."""
    why = dispatch.BACKENDS[backend].unavailable()
    if why:
        pytest.skip(why)
    err = _error(backend, N, 4, 64, dtype, alibi(4, "cuda"))
    assert err <= BOUND, f"{backend} {dtype} N={N}: d slope relative error {err:.2e} > {BOUND}"
