"""The `triton` backend: Triton kernels on a GPU, or in Triton's CPU interpreter when
TRITON_INTERPRET=1 (float32 and float16 there: the interpreter's bfloat16 dot is wrong).

Kernels: fwd.py (segment states, scan, outputs; the state-only pass), bwd.py (dk/dv reverse
walk; dq reuses the forward), decode.py; _common.py holds the launch helpers and the segment
plan. Every import of the `triton` library here is absolute: this package never shadows it.
"""
import functools

import torch

from ... import config
from .. import Backend


def _fix(e: Exception) -> str:
    """The install command that fixes an import error: the missing module's distribution
    (e.g. numpy for the interpreter), else triton itself."""
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    return f"pip install {(missing or 'triton').split('.')[0]}"


def _import_failure(what: str, e: Exception) -> str:
    return f"{what} is not importable ({type(e).__name__}: {e}); to fix: `{_fix(e)}`"


try:
    import triton  # noqa: F401
    _IMPORT_ERROR = None
except Exception as e:  # a missing Triton never breaks the package
    _IMPORT_ERROR = _import_failure("triton", e)

if _IMPORT_ERROR is None:
    from . import _common, bwd, decode, fwd


@functools.cache
def _interpreter_import_error():
    """Why Triton's CPU interpreter cannot be imported (it needs numpy), or None. Cached:
    imports are settled once the first call has tried."""
    try:
        import triton.runtime.interpreter  # noqa: F401
    except Exception as e:
        return _import_failure("Triton's CPU interpreter", e)
    return None


def _interpreter_error():
    """Why Triton's CPU interpreter cannot run these kernels here, or None."""
    return _interpreter_import_error() or _common.interpreter_problem()


def unavailable():
    """Why the Triton backend cannot run on this machine, or None."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if _common.interpret():
        return _interpreter_error()
    if not torch.cuda.is_available():
        return ("no CUDA GPU is visible (and TRITON_INTERPRET is not 1); set TRITON_INTERPRET=1 "
                "to run the Triton kernels on the CPU")
    return None


def unsupported(q, k, v, cu_seqlens):
    """Why the Triton backend cannot serve these tensors, or None."""
    if q.device.type == "cpu" and _common.interpret():
        if q.dtype == torch.bfloat16:
            return ("Triton's CPU interpreter computes bfloat16 dot products wrongly; "
                    "pass float32 or float16 tensors")
    elif q.device.type != "cuda":
        return (f"tensors are on {q.device.type}; the Triton kernels need CUDA tensors "
                f"(or CPU tensors with TRITON_INTERPRET=1)")
    D, E = q.shape[-1], v.shape[-1]
    if D not in config.HEAD_DIMS or E not in config.HEAD_DIMS:
        return f"head dims must be multiples of 16 from 16 to 256 (got D={D}, E={E})"
    if q.dtype not in config.DTYPES:
        return f"dtype must be one of float16, bfloat16, float32 (got {q.dtype})"
    return None


if _IMPORT_ERROR is None:
    BACKEND = Backend(name="triton", fwd=fwd.fwd, bwd=bwd.bwd, decode=decode.decode,
                      state=fwd.state, pool_prefill=fwd.pool_prefill,
                      pool_decode=decode.pool_decode,
                      unavailable=unavailable, unsupported=unsupported)
else:
    BACKEND = Backend(name="triton", fwd=None, bwd=None, decode=None, state=None,
                      pool_prefill=None, pool_decode=None,
                      unavailable=unavailable, unsupported=unsupported)
