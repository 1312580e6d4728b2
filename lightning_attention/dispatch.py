"""The backend registry and the dispatch rule: the one place that decides which
implementation serves a call.

A backend is a module-level set of functions with the *kernel interface* below. Inputs
reaching a backend have already been validated (lightning_attention/checks.py): shapes and
dtypes agree, every tensor is on one device, `stride(-1) == 1`.

    fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state)
        -> (o, final_state or None)
    bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope)
        -> (dq, dk, dv, dinitial_state or None, dslope_terms or None)
    decode(q, k, v, state, slope, scale) -> o          (state updated in place)
    state(a, b, slope, scale, to_end) -> float32 (B, H, D, E)

- q, k: (B, H, N, D); v: (B, H, N, E); any strides with stride(-1) == 1.
- slope: None (no decay) or float32 contiguous (H,); the decay is exp(-slope).
- scale: Python float.
- initial_state / final_state / dfinal_state / dinitial_state: None or float32
  contiguous (B, H, D, E), or (num_seqs, H, D, E) with cu_seqlens.
- cu_seqlens: None or int32 contiguous (num_seqs + 1,) on q's device; then B == 1.
- o, dq, dk, dv: the dtype and memory layout of q, k, v (layout.empty_like_layout).
- bwd returns dinitial_state whenever initial_state is given (the d slope reduction in
  ops.py needs it even when the state itself does not require grad). d slope itself is
  not a backend's job: ops.py derives it from per-token terms q_t·dq_t − k_t·dk_t and the
  states. With need_dslope, a backend should return those terms as float32 (B, H, N),
  computed from its float32 gradients before they are rounded to the output dtype
  (rounded bf16 gradients make d slope several % off); returning None makes ops.py
  compute them from the rounded dq, dk.
- decode: q, k (B, H, D), v (B, H, E), state (B, H, D, E) float32, o (B, H, E).
- state: a (B, H, N, D), b (B, H, N, E), N ≥ 1; returns Σ_t w_t a_tᵀ b_t with
  w_t = λ^{N-1-t} when to_end (the state a sequence leaves from a zero start: a, b = k, v)
  or scale·λ^{t+1} (the gradient its outputs send to its initial state: a, b = q, do).
  Sequence parallelism (distributed.py) runs it once per direction.

Besides those, each backend has `unavailable() -> str | None` (why it cannot run on this
machine, or None) and `unsupported(q, k, v, cu_seqlens) -> str | None` (why it cannot
serve these tensors, or None).
"""
import importlib
import os

from . import config

_MODULES = {
    "cuda": "lightning_attention.cuda",
    "triton": "lightning_attention.triton",
    "torch": "lightning_attention.reference",
}
_FIX = {
    "cuda": "reinstall with the CUDA extension: "
            "`CUDA_HOME=/usr/local/cuda pip install --no-build-isolation --force-reinstall .`",
    "triton": "install a GPU build of PyTorch with Triton (`pip install torch triton`), "
              "or set TRITON_INTERPRET=1 to run the kernels on the CPU",
    "torch": "",
}
ENV_BACKEND = "LIGHTNING_ATTENTION_BACKEND"


def _load(name):
    """(module, None), or (None, why) when it fails to import: never fatal."""
    try:
        return importlib.import_module(_MODULES[name]), None
    except Exception as e:
        return None, f"failed to import ({type(e).__name__}: {e})"


# Imported once, here, so that dispatch is plain attribute access that torch.compile
# traces (it cannot trace an import).
_LOADED = {name: _load(name) for name in _MODULES}


def get(name: str):
    """The backend module called `name`."""
    mod, why = _LOADED[name]
    if mod is None:
        raise RuntimeError(f"lightning_attn: backend {name!r} {why}")
    return mod


def _reason(name: str, q, k, v, cu_seqlens):
    mod, why = _LOADED[name]
    if mod is None:
        return why
    why = mod.unavailable()
    if why is None and q is not None:
        why = mod.unsupported(q, k, v, cu_seqlens)
    return why


def select(backend, q, k, v, cu_seqlens=None) -> str:
    """The name of the backend that serves this call.

    `backend` is None/"auto" (the env var LIGHTNING_ATTENTION_BACKEND, else the first of
    config.BACKEND_ORDER that can serve the call) or a backend's name. Reads only
    devices, dtypes and shapes: no device synchronisation, traceable by torch.compile.
    """
    if backend is None:
        backend = os.environ.get(ENV_BACKEND) or "auto"
    if backend == "auto":
        for name in config.BACKEND_ORDER:
            if _reason(name, q, k, v, cu_seqlens) is None:
                return name
        raise RuntimeError("lightning_attn: no backend can serve this call")  # torch always can
    if backend not in _MODULES:
        raise ValueError(
            f"lightning_attn: backend must be one of None, 'auto', "
            f"{', '.join(repr(b) for b in _MODULES)} (got {backend!r})")
    why = _reason(backend, q, k, v, cu_seqlens)
    if why is not None:
        fix = f"; to fix: {_FIX[backend]}" if _FIX[backend] else ""
        raise RuntimeError(f"lightning_attn: backend {backend!r} cannot serve this call: {why}{fix}")
    return backend


def report() -> dict:
    """{backend name: None if available on this machine, else why not}."""
    return {name: _reason(name, None, None, None, None) for name in _MODULES}
