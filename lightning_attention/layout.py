"""Output allocation that keeps the caller's memory layout (BHND or BNHD)."""
import contextlib

import torch

_poison = False


@contextlib.contextmanager
def poisoned():
    """Tests: fill every output allocated here with NaN, so an element a kernel forgets
    to write fails the comparison."""
    global _poison
    _poison, before = True, _poison
    try:
        yield
    finally:
        _poison = before


def is_bnhd(x: torch.Tensor) -> bool:
    """True when `x` (B, H, N, ·) is a transposed view of a (B, N, H, ·) tensor."""
    return x.dim() == 4 and x.stride(1) < x.stride(2)


def num_states(q: torch.Tensor, cu_seqlens) -> int:
    """How many states a call has: one per batch entry, or per packed sequence."""
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def empty_like_layout(x: torch.Tensor, last_dim: int, dtype=None) -> torch.Tensor:
    """A new (B, H, N, last_dim) tensor laid out like `x`: (B, N, H, ·) memory when `x` is,
    else contiguous (B, H, N, ·)."""
    B, H, N, _ = x.shape
    dtype = x.dtype if dtype is None else dtype
    if is_bnhd(x):
        out = torch.empty(B, N, H, last_dim, dtype=dtype, device=x.device).transpose(1, 2)
    else:
        out = torch.empty(B, H, N, last_dim, dtype=dtype, device=x.device)
    return out.fill_(float("nan")) if _poison else out
