"""Lightning Attention-2: causal linear attention with per-head decay, in blocks."""
from .api import backends, build_slopes, lightning_attn, lightning_attn_decode
from .modules import LightningAttention

__version__ = "0.1.0"
__all__ = ["lightning_attn", "lightning_attn_decode", "build_slopes", "backends",
           "LightningAttention", "__version__"]
