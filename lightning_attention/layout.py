"""Output allocation that keeps the caller's memory layout (BHND or BNHD)."""
import torch


def is_bnhd(x: torch.Tensor) -> bool:
    """True when `x` (B, H, N, ·) is a transposed view of a (B, N, H, ·) tensor."""
    return x.dim() == 4 and x.stride(1) < x.stride(2)


def empty_like_layout(x: torch.Tensor, last_dim: int, dtype=None) -> torch.Tensor:
    """A new (B, H, N, last_dim) tensor laid out like `x`: (B, N, H, ·) memory when `x` is,
    else contiguous (B, H, N, ·)."""
    B, H, N, _ = x.shape
    dtype = x.dtype if dtype is None else dtype
    if is_bnhd(x):
        return torch.empty(B, N, H, last_dim, dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty(B, H, N, last_dim, dtype=dtype, device=x.device)
