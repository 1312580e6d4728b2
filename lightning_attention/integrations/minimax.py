"""A drop-in for Hugging Face transformers' MiniMax models (the MiniMax-Text-01
architecture): `patch(model)` runs every lightning-attention layer's core on this package's
kernels, for prefill, chunked prefill and generation with transformers' own cache.

    from transformers import MiniMaxForCausalLM
    from lightning_attention.integrations import minimax
    model = minimax.patch(MiniMaxForCausalLM.from_pretrained(...))
    model.generate(...)

The layers keep their projections, activation, padding mask, norm and gate; only
`o = lightning attention(q, k, v)` and the state change hands. Slopes are the layer's own
(`slope_rate`: MiniMax's depth factor 1 − l/(L − 1 + 1e-5) + 1e-5 differs from
`build_slopes` in the last layer). The state kept in the cache is float32 (the unpatched
layer keeps it in the model's dtype; a state it left there is read as float32).
transformers is imported only here, and only when `patch` is called.
"""
import functools

import torch

from ..api import lightning_attn, lightning_attn_decode


def patch(model, *, backend=None):
    """Switch the `MiniMaxLightningAttention` layers of `model` (any module containing them,
    e.g. `MiniMaxForCausalLM`) to lightning_attention, in place. `backend` as in
    `lightning_attn` (None: automatic). Returns `model`."""
    from transformers.models.minimax import modeling_minimax
    layers = [m for m in model.modules()
              if isinstance(m, modeling_minimax.MiniMaxLightningAttention)]
    if not layers:
        raise ValueError(f"minimax.patch: {type(model).__name__} has no MiniMaxLightningAttention "
                         "layer (expected a transformers MiniMax model)")
    for layer in layers:
        layer.forward = functools.partial(_forward, layer,
                                          modeling_minimax.apply_mask_to_padding_states, backend)
    return model


def _forward(layer, mask_padding, backend, hidden_states, position_embeddings=None,
             attention_mask=None, cache=None, **kwargs):
    """MiniMaxLightningAttention.forward with the attention core of this package: returns
    (output (B, N, hidden), the layer's state after the tokens, float32 (B, H, D, D))."""
    if cache is None:  # transformers before 5.24 names it past_key_values
        cache = kwargs.get("past_key_values")
    B, N, _ = hidden_states.shape
    H, D = layer.num_attention_heads, layer.head_dim
    qkv = mask_padding(layer.act_fn(layer.qkv_proj(hidden_states)), attention_mask)
    # (B, H, N, D) views of the (B, N, H, 3D) projections: no copies
    q, k, v = (x.transpose(1, 2) for x in qkv.view(B, N, H, 3 * D).split(D, dim=3))
    slope = layer.slope_rate.view(H).float()
    state = cache.get_linear_cache(layer.layer_idx) if cache is not None else None
    if isinstance(state, torch.Tensor):
        state = state.float().contiguous()
    else:  # no state yet (the cache holds [] for layers it skipped)
        state = None
    if state is not None and N == 1:
        o = lightning_attn_decode(q[:, :, 0], k[:, :, 0], v[:, :, 0], state, slope,
                                  backend=backend).unsqueeze(2)
    else:
        o, state = lightning_attn(q, k, v, slope, initial_state=state, output_final_state=True,
                                  backend=backend)
    out = layer.norm(o.transpose(1, 2).reshape(B, N, H * D))
    out = layer.out_proj(torch.sigmoid(layer.output_gate(hidden_states)) * out)
    if cache is not None:
        cache.set_linear_cache(layer.layer_idx, state)
    return out, state
