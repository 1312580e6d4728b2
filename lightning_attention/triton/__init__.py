"""The Triton backend: the kernel interface of lightning_attention/dispatch.py.

    fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state) -> (o, final)
    bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope)
        -> (dq, dk, dv, dinitial_state, dslope_terms)
    decode(q, k, v, state, slope, scale) -> o
    state(a, b, slope, scale, to_end) -> (B, H, D, E) float32

Kernels: fwd.py (segment states, scan, outputs; the state-only pass), bwd.py (dk/dv reverse
walk; dq reuses the forward), decode.py. On the CPU they run in Triton's interpreter when TRITON_INTERPRET=1.
"""
import os

from .. import config

try:
    import triton  # noqa: F401
    _IMPORT_ERROR = None
except Exception as e:  # pragma: no cover - depends on the install
    _IMPORT_ERROR = f"triton is not importable ({type(e).__name__}: {e})"

if _IMPORT_ERROR is None:
    from .bwd import bwd
    from .decode import decode
    from .fwd import fwd, state
else:  # pragma: no cover
    def _missing(*args, **kwargs):
        raise RuntimeError(f"lightning_attn: Triton backend unavailable: {_IMPORT_ERROR}")

    fwd = bwd = decode = state = _missing


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable():
    """Why the Triton backend cannot run on this machine, or None."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if _interpret():
        from ._common import interpreter_problem
        return interpreter_problem()
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (and TRITON_INTERPRET is not 1)"
    return None


def unsupported(q, k, v, cu_seqlens):
    """Why the Triton backend cannot serve these tensors, or None."""
    if q.device.type != "cuda" and not (q.device.type == "cpu" and _interpret()):
        return (f"tensors are on {q.device.type}; the Triton kernels need CUDA tensors "
                f"(or CPU tensors with TRITON_INTERPRET=1)")
    D, E = q.shape[-1], v.shape[-1]
    if D not in config.HEAD_DIMS or E not in config.HEAD_DIMS:
        return f"head dims must be multiples of 16 from 16 to 256 (got D={D}, E={E})"
    if q.dtype not in config.DTYPES:
        return f"dtype must be one of float16, bfloat16, float32 (got {q.dtype})"
    return None


__all__ = ["fwd", "bwd", "decode", "state", "unavailable", "unsupported"]
