"""Fake (meta) kernels of the C++ ops, so that torch.compile and opcheck can trace them."""
import torch

from ...layout import empty_like_layout, kept_like, no_state, num_states


def _state(q, v, cu_seqlens):
    return q.new_empty(num_states(q, cu_seqlens), q.shape[1], q.shape[3], v.shape[3],
                       dtype=torch.float32)


@torch.library.register_fake("lightning_attention_C::fwd")
def _fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state, seg_len=None):
    o = empty_like_layout(q, v.shape[-1])
    final = _state(q, v, cu_seqlens) if output_final_state else no_state(q)
    return o, final, kept_like(q, v)


@torch.library.register_fake("lightning_attention_C::bwd")
def _bwd(dout, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope,
         kept=None, seg_len=None):
    dq, dk, dv = (empty_like_layout(x, x.shape[-1]) for x in (q, k, v))
    ds0 = _state(q, v, cu_seqlens) if initial_state is not None else no_state(q)
    terms = q.new_empty(q.shape[:3], dtype=torch.float32) if need_dslope else no_state(q)
    return dq, dk, dv, ds0, terms


@torch.library.register_fake("lightning_attention_C::decode")
def _decode(q, k, v, state, slope, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])


@torch.library.register_fake("lightning_attention_C::pool_prefill")
def _pool_prefill(q, k, v, slope, scale, cu_seqlens, state_pool, slots, has_state,
                  seg_len=None):
    return empty_like_layout(q, v.shape[-1])


@torch.library.register_fake("lightning_attention_C::pool_decode")
def _pool_decode(q, k, v, state_pool, slots, slope, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
