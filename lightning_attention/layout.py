"""Output allocation: the caller's memory layout (BHND or BNHD), the state dtype, the
empty tensor that stands for "no state", and a forward's `kept` states."""
import torch


def is_bnhd(x: torch.Tensor) -> bool:
    """True when `x` (B, H, N, ·) is a transposed view of a (B, N, H, ·) tensor."""
    return x.dim() == 4 and x.stride(1) < x.stride(2)


def num_states(q: torch.Tensor, cu_seqlens) -> int:
    """How many states a call has: one per batch entry, or per packed sequence."""
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def state_dtype(q: torch.Tensor) -> torch.dtype:
    """States are float32 (float64 for float64 inputs)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def no_state(like: torch.Tensor) -> torch.Tensor:
    """Custom ops cannot return None: an empty float32 tensor stands for 'no state'."""
    return like.new_empty(0, dtype=torch.float32)


def nothing_kept(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The `kept` output of a forward that keeps nothing for its backward: float32
    (0, H, D, E) (kernels/__init__.py)."""
    return q.new_empty(0, q.shape[1], q.shape[3], v.shape[3], dtype=torch.float32)


def kept_like(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A fake kernel's `kept` output: its first dimension is the backend's plan, known only
    when the kernels run (a size torch.compile treats as data-dependent)."""
    n = torch.library.get_ctx().new_dynamic_size()
    return q.new_empty(n, q.shape[1], q.shape[3], v.shape[3], dtype=torch.float32)


def empty_like_layout(x: torch.Tensor, last_dim: int, dtype=None) -> torch.Tensor:
    """A new (B, H, N, last_dim) tensor laid out like `x`: (B, N, H, ·) memory when `x` is,
    else contiguous (B, H, N, ·)."""
    B, H, N, _ = x.shape
    dtype = x.dtype if dtype is None else dtype
    if is_bnhd(x):
        return torch.empty(B, N, H, last_dim, dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty(B, H, N, last_dim, dtype=dtype, device=x.device)
