"""Finite differences (torch.autograd.gradcheck, float64, torch backend) for every gradient,
d slope included, in every combination of the features that add terms to it: packed
sequences (empty ones first and last, one of length 1), an initial state, a loss on the
final state, no decay (λ = 1), a scale, both layouts. Blocks of 8 tokens, so every
sequence longer than 8 crosses block boundaries."""
import importlib
import itertools

import pytest
import torch

import lightning_attention as la
from lightning_attention.kernels.torch_backend import blocks
from utils import randn, rand_state

N, H, D, E = 40, 2, 16, 16
CU_SEQLENS = [0, 0, 17, 18, 40, 40]
# A slope of 0 is no decay; finite differences step by 1e-6 to either side, and a slope
# below 0 is refused, so "no decay" with a d slope is a slope of 1e-5 (λ = 1 − 1e-5).
SLOPES = {"decay": [0.3, 0.05], "no decay": [1e-5, 1e-5], "none": None}
COMBOS = list(itertools.product([False, True], [False, True], [False, True], SLOPES))


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    for fn in (blocks.fwd, blocks.bwd):
        monkeypatch.setitem(fn.__kwdefaults__, "block", 8)
    # On a mismatch, fast mode recomputes the whole Jacobian for its message: minutes here
    monkeypatch.setattr(importlib.import_module("torch.autograd.gradcheck"),
                        "_run_slow_mode_and_get_error", lambda *args, **kwargs: "")


@pytest.mark.parametrize("layout", ["bhnd", "bnhd"])
@pytest.mark.parametrize("varlen,initial,final,slope", COMBOS,
                         ids=lambda x: str(x).replace(" ", "_"))
def test_gradcheck(layout, varlen, initial, final, slope):
    torch.manual_seed(0)
    cu = torch.tensor(CU_SEQLENS) if varlen else None
    B, num = (1, len(CU_SEQLENS) - 1) if varlen else (2, 2)
    q, k = (randn(B, H, N, D, dtype=torch.float64, layout=layout, scale=D ** -0.5) for _ in "qk")
    v = randn(B, H, N, E, dtype=torch.float64, layout=layout)
    s = None if SLOPES[slope] is None else torch.tensor(SLOPES[slope], dtype=torch.float64)
    s0 = rand_state(num, H, D, E).double() if initial else None
    args = [x.requires_grad_() for x in (q, k, v, s, s0) if x is not None]

    def f(*xs):
        xs = iter(xs)
        q, k, v = next(xs), next(xs), next(xs)
        slope = next(xs) if s is not None else None
        state = next(xs) if initial else None
        # the scale rides with the layout: each case of the others sees both scales
        return la.lightning_attn(q, k, v, slope, scale=0.5 if layout == "bnhd" else 1.0,
                                 initial_state=state, output_final_state=final,
                                 cu_seqlens=cu, backend="torch")
    assert torch.autograd.gradcheck(f, args, fast_mode=True)
