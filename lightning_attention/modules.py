"""LightningAttention: a TransNormerLLM-style token mixer for custom models."""
import torch
import torch.nn.functional as F
from torch import nn

from .api import build_slopes, lightning_attn, lightning_attn_decode
from .distributed import lightning_attn_sp


class LightningAttention(nn.Module):
    """(B, N, C) in, (B, N, C) out.

    x → [q, k, v, u] projections → SiLU on q, k → lightning_attn with per-head slopes from
    build_slopes(num_heads, layer_idx, num_layers) → RMSNorm → gate sigmoid(u) → out proj.

    forward(x, state=None, output_state=False): `state` (B, H, head_dim, head_dim) float32
    carries a sequence across calls (chunked prefill); with output_state=True returns
    (y, new_state). step(x, state): one token (B, C) for generation, `state` updated in
    place.

    sequence_parallel_group: a torch.distributed group over which each forward's sequence is
    split, rank i holding the i-th slice (B, N_i, C) (lightning_attn_sp); no state in or out.
    """

    def __init__(self, embed_dim, num_heads, head_dim=None, *, layer_idx=0, num_layers=1,
                 bias=False, norm_eps=1e-5, backend=None, sequence_parallel_group=None,
                 device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        self.backend = backend
        self.sequence_parallel_group = sequence_parallel_group
        hidden = num_heads * self.head_dim
        factory = {"device": device, "dtype": dtype}
        self.qkvu_proj = nn.Linear(embed_dim, 4 * hidden, bias=bias, **factory)
        self.norm = nn.RMSNorm(hidden, eps=norm_eps, **factory)
        self.out_proj = nn.Linear(hidden, embed_dim, bias=bias, **factory)
        self.register_buffer("slope", build_slopes(num_heads, layer_idx, num_layers, device=device),
                             persistent=False)

    def _project(self, x):
        """x (B, N, C) → q, k, v as (B, H, N, d) views of (B, N, H, d) memory, and u (B, N, hidden)."""
        B, N, _ = x.shape
        q, k, v, u = self.qkvu_proj(x).view(B, N, 4, self.num_heads, self.head_dim).unbind(2)
        q, k = F.silu(q), F.silu(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), u.reshape(B, N, -1)

    def _output(self, o, u):
        return self.out_proj(self.norm(o) * torch.sigmoid(u))

    def forward(self, x, state=None, output_state=False):
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
        """One token x (B, C); state (B, H, head_dim, head_dim) float32, updated in place."""
        q, k, v, u = self._project(x.unsqueeze(1))
        o = lightning_attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, self.slope,
                                  backend=self.backend)
        return self._output(o.reshape(u.shape[0], -1), u[:, 0])

    def init_state(self, batch_size, device=None):
        """A zero state (batch_size, H, head_dim, head_dim) float32."""
        return torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim,
                           dtype=torch.float32, device=device or self.slope.device)
