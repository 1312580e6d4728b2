"""The `torch` backend (blocks.py, pool.py): plain PyTorch, serves every call on every device."""
from .. import Backend
from . import blocks, pool


def _never(*args):
    return None


BACKEND = Backend(name="torch", fwd=blocks.fwd, bwd=blocks.bwd, decode=blocks.decode,
                  state=blocks.state, pool_prefill=pool.pool_prefill,
                  pool_decode=pool.pool_decode, unavailable=_never, unsupported=_never)
