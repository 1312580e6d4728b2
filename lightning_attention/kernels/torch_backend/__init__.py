"""The `torch` backend (blocks.py): plain PyTorch, serves every call on every device."""
from .. import Backend
from . import blocks


def _never(*args):
    return None


BACKEND = Backend(name="torch", fwd=blocks.fwd, bwd=blocks.bwd, decode=blocks.decode,
                  state=blocks.state, unavailable=_never, unsupported=_never)
