"""The `cuda` backend: the handwritten kernels of csrc/, in the extension
`lightning_attention._C` (ops `torch.ops.lightning_attention_C.{fwd, bwd, decode,
pool_prefill, pool_decode}`, whose schemas follow the kernel interface, so they are this
backend's functions as they are).

What the kernels are compiled for (head dims, dtypes, shared memory per block) is declared
once in csrc/la_specs.h and read here from `_C`; everything else is declined by
`unsupported` and the dispatcher picks another backend. The state-only pass has no CUDA
kernel: the dispatcher takes it from the next backend.

The serving functions (states in a pool: ops pool_prefill, pool_decode) are the backend's
unless LIGHTNING_ATTENTION_CUDA_SERVING=0, read once (`SERVING`); with it the dispatcher
takes them from the next backend. `POOL` holds them either way (tests install them). The dense
decode is the pool decode's kernel with one state per row.
"""
import importlib
import os
import warnings

import torch

from .. import Backend

#: The one command that builds the extension into an existing install of the package.
REINSTALL = ("CUDA_HOME=/usr/local/cuda pip install --no-build-isolation --no-deps "
             "--force-reinstall .")


def _load():
    """(the extension module, None), or (None, why it is missing and the command that fixes it)."""
    try:
        return importlib.import_module("lightning_attention._C"), None
    except ModuleNotFoundError as e:
        if e.name != "lightning_attention._C":
            why = f"the CUDA extension lightning_attention._C failed to import ({type(e).__name__}: {e})"
        else:
            why = "the CUDA extension lightning_attention._C is not built (a pure-Python install)"
    except Exception as e:  # a broken extension never breaks the package
        why = f"the CUDA extension lightning_attention._C failed to load ({type(e).__name__}: {e})"
    return None, f"{why}; to fix: reinstall from the source checkout with `{REINSTALL}`"


_C, _IMPORT_ERROR = _load()

#: Head dims (D = E) and input dtypes the kernels are compiled for (empty without them).
HEAD_DIMS = tuple(_C.head_dims) if _C is not None else ()
DTYPES = tuple(getattr(torch, name) for name in _C.dtypes) if _C is not None else ()


def build_info() -> dict:
    """What the extension was built with (empty without it)."""
    if _C is None:
        return {}
    return {"cuda_version": _C.cuda_version, "cuda_archs": _C.cuda_archs, "head_dims": HEAD_DIMS,
            "dtypes": DTYPES}


# Settled at import (the extension and the visible GPUs do not change while a process runs);
# plain values rather than a cache wrapper, so that torch.compile traces dispatch cleanly.
_UNAVAILABLE = _IMPORT_ERROR or (None if torch.cuda.is_available()
                                 else "no CUDA GPU is visible to PyTorch")


_warned = False


def unavailable():
    """Why the backend cannot run here, or None. A pure-Python install is silent under pip
    (it hides setup.py's output), so the first dispatch on a machine with a CUDA GPU says so
    once."""
    global _warned
    if _IMPORT_ERROR is not None and not _warned and torch.cuda.is_available() \
            and not torch.compiler.is_compiling():
        _warned = True
        warnings.warn(f"lightning_attention: the CUDA backend is off ({_IMPORT_ERROR}); calls go "
                      "to Triton or PyTorch", stacklevel=4)
    return _UNAVAILABLE


_DEVICE_REFUSAL = {}  # (device index, head dim) -> why the kernels cannot run there, or None


def _device_refusal(index: int, D: int):
    """Why the kernels of head dim D cannot run on GPU `index`, or None (read once per device
    and head dim). Each head dim needs its own shared memory per block: an A100 (163 KiB)
    runs D = 64 (91 KiB) but not D = 128 (205 KiB), which then goes to Triton."""
    if (index, D) not in _DEVICE_REFUSAL:
        props = torch.cuda.get_device_properties(index)
        have, need = props.shared_memory_per_block_optin, _C.smem_bytes[D]
        why = None
        if (props.major, props.minor) < (8, 0):
            why = f"the CUDA kernels need compute capability >= 8.0 (got {props.major}.{props.minor})"
        elif have < need:
            why = (f"the kernels for D = {D} need {need} bytes of shared memory per block "
                   f"(this GPU: {have})")
        _DEVICE_REFUSAL[(index, D)] = why
    return _DEVICE_REFUSAL[(index, D)]


def unsupported(q, k, v, cu_seqlens):
    if not q.is_cuda:
        return f"the CUDA kernels need CUDA tensors (got {q.device.type} tensors)"
    if q.dtype not in DTYPES:
        names = "/".join(str(d).removeprefix("torch.") for d in DTYPES)
        return f"the CUDA kernels take {names} (got {q.dtype}); cast q, k, v to one of them"
    D, E = q.shape[-1], v.shape[-1]
    if D != E or D not in HEAD_DIMS:
        return f"the CUDA kernels are specialised for D = E in {HEAD_DIMS} (got D = {D}, E = {E})"
    if q.shape[2] >= 2 ** 31:
        return f"N must be below 2^31 (got {q.shape[2]})"
    return _device_refusal(q.device.index if q.device.index is not None else torch.cuda.current_device(), D)


#: The CUDA pool kernels serve serving.prefill/decode unless LIGHTNING_ATTENTION_CUDA_SERVING=0
#: (for comparisons with the Triton ones).
SERVING = os.environ.get("LIGHTNING_ATTENTION_CUDA_SERVING") != "0"
_NO_POOL = {"pool_prefill": None, "pool_decode": None}

if _C is not None:
    from . import fakes  # noqa: F401  (torch.compile and opcheck on the C++ ops)
    _ops = torch.ops.lightning_attention_C
    POOL = {"pool_prefill": _ops.pool_prefill.default, "pool_decode": _ops.pool_decode.default}
    BACKEND = Backend(name="cuda", fwd=_ops.fwd.default, bwd=_ops.bwd.default,
                      decode=_ops.decode.default, state=None,
                      **(POOL if SERVING else _NO_POOL), unavailable=unavailable,
                      unsupported=unsupported)
else:
    POOL = _NO_POOL
    BACKEND = Backend(name="cuda", fwd=None, bwd=None, decode=None, state=None, **_NO_POOL,
                      unavailable=unavailable, unsupported=unsupported)
