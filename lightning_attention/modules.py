"""LightningAttention: a TransNormerLLM-style token mixer for custom models."""
import torch
import torch.nn.functional as F
from torch import nn

from . import config
from .api import build_slopes, lightning_attn, lightning_attn_decode
from .checks import state_dtype
from .distributed import lightning_attn_sp


def _fail(msg, where="LightningAttention", exc=ValueError):
    raise exc(f"{where}: {msg}")


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(f"{name} must be a positive int (got {value!r})")


class LightningAttention(nn.Module):
    """(B, N, C) in, (B, N, C) out.

    x → [q, k, v, u] projections → SiLU on q, k → lightning_attn with per-head slopes from
    build_slopes(num_heads, layer_idx, num_layers) → RMSNorm → gate sigmoid(u) → out proj.

    head_dim defaults to embed_dim // num_heads; it must be a multiple of 16 from 16 to 256.

    forward(x, state=None, output_state=False): `state` (B, H, head_dim, head_dim) carries a
    sequence across calls (chunked prefill); with output_state=True returns (y, new_state).
    step(x, state): one token (B, C) for generation, `state` updated in place.
    init_state(batch_size): the zero state to start from. States are float32 (float64 for
    a float64 module).

    sequence_parallel_group: a torch.distributed group over which each forward's sequence is
    split, rank i holding the i-th slice (B, N_i, C) (lightning_attn_sp); no state in or out.
    """

    def __init__(self, embed_dim, num_heads, head_dim=None, *, layer_idx=0, num_layers=1,
                 bias=False, norm_eps=1e-5, backend=None, sequence_parallel_group=None,
                 device=None, dtype=None):
        super().__init__()
        _check_positive("embed_dim", embed_dim)
        _check_positive("num_heads", num_heads)
        _check_positive("num_layers", num_layers)
        name = "head_dim"
        if head_dim is None:
            if embed_dim % num_heads:
                _fail(f"embed_dim must be divisible by num_heads when head_dim is not given "
                      f"(got embed_dim={embed_dim}, num_heads={num_heads})")
            name, head_dim = "head_dim (embed_dim // num_heads)", embed_dim // num_heads
        if head_dim not in config.HEAD_DIMS:
            _fail(f"{name} must be a multiple of 16 from {config.HEAD_DIMS[0]} to "
                  f"{config.HEAD_DIMS[-1]} (got {head_dim!r})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.backend = backend
        self.sequence_parallel_group = sequence_parallel_group
        hidden = num_heads * self.head_dim
        factory = {"device": device, "dtype": dtype}
        self.qkvu_proj = nn.Linear(embed_dim, 4 * hidden, bias=bias, **factory)
        self.norm = nn.RMSNorm(hidden, eps=norm_eps, **factory)
        self.out_proj = nn.Linear(hidden, embed_dim, bias=bias, **factory)
        self.register_buffer("slope", build_slopes(num_heads, layer_idx, num_layers, device=device),
                             persistent=False)

    def _check_input(self, fn, x, dims):
        where = f"LightningAttention.{fn}"
        if not isinstance(x, torch.Tensor):
            _fail(f"x must be a torch.Tensor (got {type(x).__name__})", where, TypeError)
        if x.dim() != len(dims) or x.shape[-1] != self.embed_dim:
            _fail(f"x must have shape ({', '.join(dims)}) with C = embed_dim = "
                  f"{self.embed_dim} (got {tuple(x.shape)})", where)

    def _project(self, x):
        """x (B, N, C) → q, k, v as (B, H, N, d) views of (B, N, H, d) memory, and u (B, N, hidden)."""
        B, N, _ = x.shape
        q, k, v, u = self.qkvu_proj(x).view(B, N, 4, self.num_heads, self.head_dim).unbind(2)
        q, k = F.silu(q), F.silu(k)
        u = u.reshape(B, N, self.num_heads * self.head_dim)  # (no -1: N may be 0)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), u

    def _output(self, o, u):
        return self.out_proj(self.norm(o) * torch.sigmoid(u))

    def forward(self, x, state=None, output_state=False):
        self._check_input("forward", x, ("B", "N", "C"))
        q, k, v, u = self._project(x)
        if self.sequence_parallel_group is not None:
            if state is not None or output_state:
                raise ValueError("LightningAttention: state and output_state are not "
                                 "supported with sequence_parallel_group (got state="
                                 f"{'a tensor' if state is not None else None}, "
                                 f"output_state={output_state})")
            o = lightning_attn_sp(q, k, v, self.slope, group=self.sequence_parallel_group,
                                  backend=self.backend)
        else:
            o = lightning_attn(q, k, v, self.slope, initial_state=state,
                               output_final_state=output_state, backend=self.backend)
        o, new_state = o if output_state else (o, None)
        y = self._output(o.transpose(1, 2).reshape(u.shape), u)
        return (y, new_state) if output_state else y

    def step(self, x, state):
        """One token x (B, C); state (B, H, head_dim, head_dim), updated in place."""
        self._check_input("step", x, ("B", "C"))
        q, k, v, u = self._project(x.unsqueeze(1))
        o = lightning_attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, self.slope,
                                  backend=self.backend)
        return self._output(o.reshape(u.shape[0], self.num_heads * self.head_dim), u[:, 0])

    def init_state(self, batch_size, device=None):
        """A zero state (batch_size, H, head_dim, head_dim) on the module's device (or
        `device`): float32, float64 for a float64 module."""
        weight = self.qkvu_proj.weight
        return torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim,
                           dtype=state_dtype(weight), device=device or weight.device)
