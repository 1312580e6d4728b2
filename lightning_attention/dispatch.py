"""The backend registry and the dispatch rule: the one place that decides which backend
serves a call (the backends and their interface: lightning_attention/kernels/).

A call resolves its backend once, in the public entry (api.py), to a `Backend`; the custom
ops (ops.py) carry its name, because an op's arguments are tensors and scalars.
"""
import importlib
import os

from . import config

ENV_BACKEND = "LIGHTNING_ATTENTION_BACKEND"


def _load(name):
    """The backend `name` (its module imports every library it needs itself and reports a
    missing one through `unavailable`)."""
    return importlib.import_module(f"lightning_attention.kernels.{name}_backend").BACKEND


# Imported once, here, so that dispatch is plain attribute access that torch.compile
# traces (it cannot trace an import).
BACKENDS = {name: _load(name) for name in config.BACKEND_ORDER}


def _reason(b, q, k, v, cu_seqlens):
    why = b.unavailable()
    if why is None and q is not None:
        why = b.unsupported(q, k, v, cu_seqlens)
    return why


def _auto(q, k, v, cu_seqlens, skip=None, need="fwd"):
    """The first backend of config.BACKEND_ORDER (other than `skip`) that has `need` and
    can serve the call, or None."""
    for b in BACKENDS.values():
        if b is not skip and getattr(b, need) is not None and _reason(b, q, k, v, cu_seqlens) is None:
            return b
    return None


def select(backend, q, k, v, cu_seqlens=None):
    """The Backend that serves this call.

    `backend` is None/"auto" (the env var LIGHTNING_ATTENTION_BACKEND, else the first of
    config.BACKEND_ORDER that can serve the call) or a backend's name. Reads only devices,
    dtypes and shapes: no device synchronisation, traceable by torch.compile.
    """
    if backend is None:
        backend = os.environ.get(ENV_BACKEND) or "auto"
    if backend == "auto":
        return _auto(q, k, v, cu_seqlens)  # torch serves every call
    b = BACKENDS.get(backend)
    if b is None:
        raise ValueError(
            f"lightning_attn: backend must be one of None, 'auto', "
            f"{', '.join(repr(n) for n in BACKENDS)} (got {backend!r})")
    why = _reason(b, q, k, v, cu_seqlens)
    if why is not None:
        if "to fix:" not in why:  # no install fixes it: name a backend that serves the call
            other = _auto(q, k, v, cu_seqlens, skip=b)
            why += f"; to fix: pass backend={other.name!r} or backend=None (automatic choice)"
        raise RuntimeError(f"lightning_attn: backend {backend!r} cannot serve this call: {why}")
    return b


def providing(need, b, q, k, v, cu_seqlens=None):
    """`b` when it has the function `need` (a field of Backend), else the first backend of
    config.BACKEND_ORDER that has it and can serve the call (torch has every function)."""
    if getattr(b, need) is not None:
        return b
    return _auto(q, k, v, cu_seqlens, need=need)


def state_pass(b, a, c):
    """The state-only pass for a call served by `b`: its own, else the first backend in
    config.BACKEND_ORDER that has one and can serve (a, ·, c)."""
    return providing("state", b, a, a, c).state


def report() -> dict:
    """{backend name: None if available on this machine, else why not}."""
    return {name: b.unavailable() for name, b in BACKENDS.items()}
