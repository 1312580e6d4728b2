"""Input validation, the one place of error messages: every public entry calls it once,
and nothing below it checks again. Shape/dtype/device checks read only metadata, so they
cost no device synchronisation. Value checks run for CPU tensors always and for GPU tensors
only with LIGHTNING_ATTENTION_DEBUG=1, never while torch.compile traces or a CUDA graph
is captured."""
import math
import os

import torch

from . import config
from .layout import num_states, state_dtype

_ALL_DTYPES = config.DTYPES + config.TORCH_ONLY_DTYPES
_DTYPE_NAMES = ", ".join(str(d).replace("torch.", "") for d in _ALL_DTYPES)


def _fail(fn, msg, exc=ValueError):
    raise exc(f"{fn}: {msg}")


def _check_tensor(fn, name, x, rank, dims):
    if not isinstance(x, torch.Tensor):
        _fail(fn, f"{name} must be a torch.Tensor (got {type(x).__name__})", TypeError)
    if x.dim() != rank:
        _fail(fn, f"{name} must have rank {rank} ({dims}) (got shape {tuple(x.shape)})")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        _fail(fn, f"{name} must have stride(-1) == 1 (got strides {tuple(x.stride())}); "
                  f"call .contiguous() on it")


def _check_head_dim(fn, name, value):
    if value not in config.HEAD_DIMS:
        _fail(fn, f"{name} must be a multiple of 16 from {config.HEAD_DIMS[0]} to "
                  f"{config.HEAD_DIMS[-1]} (got {value})")


def _check_same(fn, what, names_values):
    (n0, v0), *rest = names_values
    for n, v in rest:
        if v != v0:
            _fail(fn, f"{n} must have the same {what} as {n0} (got {v} vs {v0})")


def _check_dtype_device(fn, q, others):
    if q.dtype not in _ALL_DTYPES:
        _fail(fn, f"q must be one of {_DTYPE_NAMES} (got {q.dtype})", TypeError)
    for name, x in others:
        if x.dtype != q.dtype:
            _fail(fn, f"{name} must have the same dtype as q (got {x.dtype} vs {q.dtype})", TypeError)
        if x.device != q.device:
            _fail(fn, f"{name} must be on the same device as q (got {x.device} vs {q.device})")


def _check_slope(fn, slope, H, device):
    if slope is None:
        return
    if not isinstance(slope, torch.Tensor):
        _fail(fn, f"slope must be None or a tensor of shape ({H},) (got {type(slope).__name__})",
              TypeError)
    if not slope.is_floating_point():
        _fail(fn, f"slope must be a float tensor (got {slope.dtype})", TypeError)
    if tuple(slope.shape) != (H,):
        _fail(fn, f"slope must have shape (H,) = ({H},) (got {tuple(slope.shape)})")
    if slope.device != device:
        _fail(fn, f"slope must be on q's device {device} (got {slope.device})")


def _check_state(fn, name, state, q, shape):
    if not isinstance(state, torch.Tensor):
        _fail(fn, f"{name} must be a tensor (got {type(state).__name__})", TypeError)
    if state.dtype != state_dtype(q):
        _fail(fn, f"{name} must be {state_dtype(q)} (got {state.dtype})", TypeError)
    if tuple(state.shape) != shape:
        _fail(fn, f"{name} must have shape {shape} (got {tuple(state.shape)})")
    if state.device != q.device:
        _fail(fn, f"{name} must be on q's device {q.device} (got {state.device})")


def values_checked(x: torch.Tensor) -> bool:
    """Whether value checks (which read data, so sync a GPU) run for tensors like `x`."""
    if torch.compiler.is_compiling():
        return False
    if x.device.type == "cpu":
        return True
    if os.environ.get("LIGHTNING_ATTENTION_DEBUG") != "1":
        return False
    return not (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _check_slope_values(fn, slope):
    if slope is not None and values_checked(slope) and slope.numel() > 0:
        lo, hi = torch.aminmax(slope.detach())  # one pass; NaN fails both comparisons
        if not (lo.item() >= 0 and hi.item() < math.inf):
            _fail(fn, f"slope must be finite and >= 0 (got {slope.tolist()})")


def check_attn(q, k, v, slope, initial_state, cu_seqlens, fn="lightning_attn"):
    _check_tensor(fn, "q", q, 4, "B, H, N, D")
    _check_tensor(fn, "k", k, 4, "B, H, N, D")
    _check_tensor(fn, "v", v, 4, "B, H, N, E")
    _check_dtype_device(fn, q, [("k", k), ("v", v)])
    B, H, N, D = q.shape
    E = v.shape[3]
    for i, what in enumerate(("B", "H", "N")):
        _check_same(fn, what, [("q", q.shape[i]), ("k", k.shape[i]), ("v", v.shape[i])])
    _check_same(fn, "D", [("q", D), ("k", k.shape[3])])
    _check_head_dim(fn, "D (q.shape[-1])", D)
    _check_head_dim(fn, "E (v.shape[-1])", E)
    _check_slope(fn, slope, H, q.device)
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            _fail(fn, f"cu_seqlens must be a tensor (got {type(cu_seqlens).__name__})", TypeError)
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            _fail(fn, f"cu_seqlens must be int32 or int64 (got {cu_seqlens.dtype})", TypeError)
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            _fail(fn, f"cu_seqlens must have shape (num_seqs + 1,) with num_seqs >= 1 "
                      f"(got {tuple(cu_seqlens.shape)})")
        if B != 1:
            _fail(fn, f"with cu_seqlens, q must have B == 1 (got B = {B})")
        if cu_seqlens.device != q.device:
            _fail(fn, f"cu_seqlens must be on q's device {q.device} (got {cu_seqlens.device})")
    if initial_state is not None:
        what = "num_seqs" if cu_seqlens is not None else "B"
        _check_state(fn, f"initial_state ({what}, H, D, E)", initial_state, q,
                     (num_states(q, cu_seqlens), H, D, E))
    _check_slope_values(fn, slope)
    if cu_seqlens is not None and values_checked(cu_seqlens):
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != N or any(b < a for a, b in zip(c[:-1], c[1:])):
            _fail(fn, f"cu_seqlens must start at 0, be non-decreasing and end at N = {N} "
                      f"(got {c if len(c) <= 16 else c[:8] + ['...'] + c[-8:]})")


def check_decode(q, k, v, state, slope):
    fn = "lightning_attn_decode"
    _check_decode_inputs(fn, q, k, v, slope)
    B, H, D = q.shape
    _check_state(fn, "state (B, H, D, E)", state, q, (B, H, D, v.shape[2]))
    if not state.is_contiguous():
        _fail(fn, "state must be contiguous (it is updated in place)")
    _check_slope_values(fn, slope)


def _check_decode_inputs(fn, q, k, v, slope):
    _check_tensor(fn, "q", q, 3, "B, H, D")
    _check_tensor(fn, "k", k, 3, "B, H, D")
    _check_tensor(fn, "v", v, 3, "B, H, E")
    _check_dtype_device(fn, q, [("k", k), ("v", v)])
    B, H, D = q.shape
    E = v.shape[2]
    for i, what in enumerate(("B", "H")):
        _check_same(fn, what, [("q", q.shape[i]), ("k", k.shape[i]), ("v", v.shape[i])])
    _check_same(fn, "D", [("q", D), ("k", k.shape[2])])
    _check_head_dim(fn, "D (q.shape[-1])", D)
    _check_head_dim(fn, "E (v.shape[-1])", E)
    _check_slope(fn, slope, H, q.device)


# ------------------------------------------------------------------ serving (state pools)

def _check_index(fn, name, x, n, dtypes, device):
    if not isinstance(x, torch.Tensor):
        _fail(fn, f"{name} must be a tensor (got {type(x).__name__})", TypeError)
    if x.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(fn, f"{name} must be {names} (got {x.dtype})", TypeError)
    if tuple(x.shape) != (n,):
        _fail(fn, f"{name} must have shape ({n},) (got {tuple(x.shape)})")
    if x.device != device:
        _fail(fn, f"{name} must be on q's device {device} (got {x.device})")


def _check_pool(fn, q, H, D, E, state_pool, slots, n):
    if not isinstance(state_pool, torch.Tensor):
        _fail(fn, f"state_pool must be a tensor (got {type(state_pool).__name__})", TypeError)
    if state_pool.dim() != 4:
        _fail(fn, f"state_pool must have rank 4 (num_slots, H, D, E) (got shape "
                  f"{tuple(state_pool.shape)})")
    num_slots = state_pool.shape[0]
    _check_state(fn, "state_pool (num_slots, H, D, E)", state_pool, q, (num_slots, H, D, E))
    if not state_pool.is_contiguous():
        _fail(fn, "state_pool must be contiguous (its rows are updated in place)")
    _check_index(fn, "slots", slots, n, (torch.int32, torch.int64), q.device)
    if values_checked(slots) and slots.numel() > 0:
        used = slots[slots >= 0]
        if used.numel() and used.max().item() >= num_slots:
            _fail(fn, f"slots must be < num_slots = {num_slots} (got {used.max().item()})")
        if used.unique().numel() != used.numel():
            _fail(fn, f"slots must not repeat a non-negative slot in one call (got {slots.tolist()})")


def check_prefill(q, k, v, slope, cu_seqlens, state_pool, slots, has_state):
    fn = "serving.prefill"
    if cu_seqlens is None:
        _fail(fn, "cu_seqlens must be a tensor (num_seqs + 1,) (got None)", TypeError)
    check_attn(q, k, v, slope, None, cu_seqlens, fn)
    n = cu_seqlens.shape[0] - 1
    _check_pool(fn, q, q.shape[1], q.shape[3], v.shape[3], state_pool, slots, n)
    if has_state is not None:
        _check_index(fn, "has_state", has_state, n, (torch.bool,), q.device)


def check_pool_decode(q, k, v, state_pool, slots, slope):
    fn = "serving.decode"
    _check_decode_inputs(fn, q, k, v, slope)
    B, H, D = q.shape
    _check_pool(fn, q, H, D, v.shape[2], state_pool, slots, B)
    _check_slope_values(fn, slope)
