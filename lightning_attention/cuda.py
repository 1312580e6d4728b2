"""The `cuda` backend: the handwritten kernels of csrc/ (the extension `lightning_attention._C`,
ops `torch.ops.lightning_attention_C.{fwd,bwd,decode}`), with the kernel interface of
dispatch.py, and the fake (meta) kernels that let torch.compile and opcheck trace the ops.

The kernels serve config.CUDA_DTYPES with D = E in config.CUDA_HEAD_DIMS on compute
capability >= 8.0; everything else is declined by `unsupported` (the dispatcher then picks
Triton).
"""
import contextlib
import os
import warnings

import torch

from . import config, layout, reference
from . import triton as triton_backend

_BLOCK = 64

try:
    from . import _C  # noqa: F401  (loads the library that registers the ops)
    _IMPORT_ERROR = None
except Exception as e:  # a missing or broken extension never breaks the package
    _C = None
    _IMPORT_ERROR = f"the CUDA extension lightning_attention._C is not built ({type(e).__name__}: {e})"


def build_info() -> dict:
    """What the extension was built with (empty without it)."""
    if _C is None:
        return {}
    return {"cuda_version": _C.cuda_version, "cuda_archs": _C.cuda_archs,
            "head_dims": tuple(_C.head_dims)}


_warned = False


def _warn_once_on_a_gpu():
    """A pure Python install is silent under pip (it hides setup.py's output), so say it
    once where it matters: at the first dispatch on a machine with a CUDA GPU."""
    global _warned
    if not _warned and not torch.compiler.is_compiling() and torch.cuda.is_available():
        _warned = True
        warnings.warn(f"lightning_attention: {_IMPORT_ERROR}, so the CUDA backend is off and "
                      "calls go to Triton or PyTorch. To build it: `CUDA_HOME=/usr/local/cuda "
                      "pip install --no-build-isolation --no-deps --force-reinstall .`",
                      stacklevel=4)


def unavailable():
    if _IMPORT_ERROR is not None:
        _warn_once_on_a_gpu()
        return _IMPORT_ERROR
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    return None


def smem_bytes(head_dim: int, backward: bool) -> int:
    """Dynamic shared memory of the largest kernel (pass 2): double-buffered (64, D) tiles
    with rows padded by 8 elements (3 tiles forward, 4 backward), the 16-bit state and 128
    floats of row partials. (The forward takes a third stage where the device has room.)"""
    tiles = 8 if backward else 6
    return (tiles * _BLOCK + head_dim) * (head_dim + 8) * 2 + 512


def unsupported(q, k, v, cu_seqlens):
    if not q.is_cuda:
        return "the CUDA kernels need CUDA tensors"
    if q.dtype not in config.CUDA_DTYPES:
        return (f"the CUDA kernels take float16/bfloat16 (got {q.dtype}); "
                "float32 is served by the Triton backend")
    D, E = q.shape[-1], v.shape[-1]
    if D != E or D not in config.CUDA_HEAD_DIMS:
        return (f"the CUDA kernels are specialised for D = E in {config.CUDA_HEAD_DIMS} "
                f"(got D = {D}, E = {E})")
    if q.shape[2] >= 2 ** 31:
        return f"N must be below 2^31 (got {q.shape[2]})"
    props = torch.cuda.get_device_properties(q.device)
    if (props.major, props.minor) < (8, 0):
        return f"the CUDA kernels need compute capability >= 8.0 (got {props.major}.{props.minor})"
    need = smem_bytes(D, backward=True)
    have = getattr(props, "shared_memory_per_block_optin", need)
    if have < need:
        return f"the backward kernel needs {need} bytes of shared memory per block (device: {have})"
    return None


@contextlib.contextmanager
def _poison_env():
    """Under layout.poisoned() (tests), the C++ ops fill their outputs with NaN first."""
    if not layout._poison:
        yield
        return
    before = os.environ.get("LIGHTNING_ATTENTION_POISON")
    os.environ["LIGHTNING_ATTENTION_POISON"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LIGHTNING_ATTENTION_POISON"]
        else:
            os.environ["LIGHTNING_ATTENTION_POISON"] = before


def fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state):
    with _poison_env():
        o, final_state = torch.ops.lightning_attention_C.fwd(
            q, k, v, slope, float(scale), initial_state, cu_seqlens, bool(output_final_state))
    return o, (final_state if output_final_state else None)


def bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope=False):
    """(dq, dk, dv, d initial_state or None, d slope terms (B, H, N) float32 or None): the
    terms q_t·dq_t − k_t·dk_t come from the kernels' unrounded float32 gradients."""
    with _poison_env():
        dq, dk, dv, ds0, terms = torch.ops.lightning_attention_C.bwd(
            do, dfinal_state, q, k, v, slope, float(scale), initial_state, cu_seqlens,
            bool(need_dslope))
    return (dq, dk, dv, (ds0 if initial_state is not None else None),
            (terms if need_dslope else None))


def decode(q, k, v, state, slope, scale):
    return torch.ops.lightning_attention_C.decode(q, k, v, state, slope, float(scale))


def state(a, b, slope, scale, to_end):
    """The state-only pass has no kernel of its own here: Triton's (which reads a and b
    once), or the torch backend's GEMM where Triton cannot run."""
    if triton_backend.unavailable() is None:
        return triton_backend.state(a, b, slope, scale, to_end)
    return reference.state(a, b, slope, scale, to_end)


if _C is not None:
    @torch.library.register_fake("lightning_attention_C::fwd")
    def _fwd_fake(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state):
        o = layout.empty_like_layout(q, v.shape[-1])
        n = layout.num_states(q, cu_seqlens) if output_final_state else 0
        return o, q.new_empty(n, q.shape[1], q.shape[3], v.shape[3], dtype=torch.float32)

    @torch.library.register_fake("lightning_attention_C::bwd")
    def _bwd_fake(dout, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens,
                  need_dslope):
        dq = layout.empty_like_layout(q, q.shape[-1])
        dk = layout.empty_like_layout(k, k.shape[-1])
        dv = layout.empty_like_layout(v, v.shape[-1])
        n = layout.num_states(q, cu_seqlens) if initial_state is not None else 0
        ds0 = q.new_empty(n, q.shape[1], q.shape[3], v.shape[3], dtype=torch.float32)
        terms = q.new_empty(q.shape[:3] if need_dslope else (0,), dtype=torch.float32)
        return dq, dk, dv, ds0, terms

    @torch.library.register_fake("lightning_attention_C::decode")
    def _decode_fake(q, k, v, state, slope, scale):
        return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
