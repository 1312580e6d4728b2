"""The public functions: lightning_attn, lightning_attn_decode, build_slopes, backends."""
import math

import torch

from . import checks, dispatch, ops
from .layout import state_dtype


def lightning_attn(q, k, v, slope=None, *, scale=1.0, initial_state=None,
                   output_final_state=False, cu_seqlens=None, backend=None):
    """Causal linear attention with per-head decay (Lightning Attention-2).

        S_t = λ S_{t-1} + k_tᵀ v_t,   o_t = scale · q_t S_t,   λ_h = exp(-slope_h)

    Args:
        q, k: (B, H, N, D); v: (B, H, N, E); float16, bfloat16 or float32, one dtype and
            device. Any strides with stride(-1) == 1 (pass `x.transpose(1, 2)` for
            (B, N, H, D) tensors); the output has q's memory layout.
        slope: None (no decay) or a float tensor (H,), >= 0, on q's device.
        scale: the factor c above.
        initial_state: None or float32 (B, H, D, E) ((num_seqs, H, D, E) with cu_seqlens).
        output_final_state: also return the final state, float32 (B | num_seqs, H, D, E).
        cu_seqlens: None or int32/int64 (num_seqs + 1,): packed independent sequences
            (B must be 1), FlashAttention's varlen convention.
        backend: None (auto, or the env var LIGHTNING_ATTENTION_BACKEND), "cuda",
            "triton" or "torch".

    Returns:
        o (B, H, N, E) in q's dtype, or (o, final_state) with output_final_state.
    """
    checks.check_attn(q, k, v, slope, initial_state, cu_seqlens)
    b = dispatch.select(backend, q, k, v, cu_seqlens)
    if slope is not None:
        slope = slope.to(state_dtype(q)).contiguous()
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    o, final_state, _ = ops.fwd(q, k, v, slope, initial_state, cu_seqlens, float(scale),
                                bool(output_final_state), b.name)
    return (o, final_state) if output_final_state else o


def lightning_attn_decode(q, k, v, state, slope=None, *, scale=1.0, backend=None):
    """One generation step. q, k: (B, H, D); v: (B, H, E); state: float32 (B, H, D, E),
    contiguous, updated in place to λ state + kᵀv. Returns o = scale · q state, (B, H, E).
    No host synchronisation: capturable in a CUDA graph."""
    checks.check_decode(q, k, v, state, slope)
    b = dispatch.select(backend, q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2))
    if slope is not None:
        slope = slope.to(state_dtype(q)).contiguous()
    return ops.decode(q, k, v, state, slope, float(scale), b.name)


def _alibi_slopes(n):
    if math.log2(n).is_integer():
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return _alibi_slopes(closest) + _alibi_slopes(2 * closest)[0::2][: n - closest]


def build_slopes(num_heads, layer_idx=0, num_layers=1, *, device=None):
    """TransNormerLLM's decay slopes, float32 (num_heads,): ALiBi's 2^(-8(i+1)/H) (its
    interleave for other H), times (1 - layer_idx/(num_layers-1) + 1e-5) when
    num_layers > 1, so that deeper layers decay less."""
    if num_heads < 1:
        raise ValueError(f"build_slopes: num_heads must be >= 1 (got {num_heads})")
    if num_layers > 1 and not 0 <= layer_idx < num_layers:
        raise ValueError(f"build_slopes: layer_idx must be in [0, {num_layers}) (got {layer_idx})")
    slopes = torch.tensor(_alibi_slopes(num_heads), dtype=torch.float32, device=device)
    if num_layers > 1:
        slopes = slopes * (1 - layer_idx / (num_layers - 1) + 1e-5)
    return slopes


def backends():
    """{backend name: None if it can run on this machine, else the reason why not}."""
    return dispatch.report()
