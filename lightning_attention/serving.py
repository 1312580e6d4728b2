"""Serving: one float32 D×E state per request in a pool, addressed by slot, as serving
engines keep them (vLLM, SGLang). Forward only (no autograd). The rows are read and written
in place: the pool is never copied.

    pool = torch.zeros(num_slots, H, D, E, dtype=torch.float32, device="cuda")
    o = prefill(q, k, v, slope, cu_seqlens, pool, slots, has_state=has_state)  # prompts
    o = decode(q, k, v, pool, slots, slope)                                    # one token each

Slots are int32; a negative slot reads and writes no state. Rows no slot addresses stay
bitwise unchanged. The CUDA and Triton kernels read the slots on the device (no host
synchronisation, capturable in a CUDA graph); the PyTorch backend selects the addressed
rows on the host.
"""
import torch

from . import checks, dispatch, ops
from .layout import state_dtype


def _slope(slope, q):
    return None if slope is None else slope.to(state_dtype(q)).contiguous()


def prefill(q, k, v, slope, cu_seqlens, state_pool, slots, *, has_state=None, scale=1.0,
            backend=None):
    """Packed prompts (or chunks of them) that start from and end in pool rows.

    Args:
        q, k: (1, H, T, D); v: (1, H, T, E): the sequences of `cu_seqlens` packed along T
            (FlashAttention's varlen convention), as in lightning_attn.
        slope: None (no decay) or a float tensor (H,), >= 0.
        cu_seqlens: int32/int64 (num_seqs + 1,), starting at 0, non-decreasing, last = T.
        state_pool: float32 (num_slots, H, D, E), contiguous; updated in place.
        slots: int32/int64 (num_seqs,): sequence i ends in state_pool[slots[i]]; a negative
            slot reads and writes no state. Non-negative slots are < num_slots and distinct.
        has_state: None (all False) or bool (num_seqs,): sequence i starts from
            state_pool[slots[i]] where True (chunked prefill), else from zero.
        scale: the output factor c, o_t = c · q_t S_t.
        backend: None (auto) or a backend's name, as in lightning_attn; a backend without
            these functions (cuda with LIGHTNING_ATTENTION_CUDA_SERVING=0) hands them to
            the next one.

    Returns:
        o (1, H, T, E) in q's dtype and memory layout.
    """
    checks.check_prefill(q, k, v, slope, cu_seqlens, state_pool, slots, has_state)
    b = dispatch.select(backend, q, k, v, cu_seqlens)
    b = dispatch.providing("pool_prefill", b, q, k, v, cu_seqlens)
    with torch.no_grad():
        return ops.pool_prefill(q, k, v, _slope(slope, q), cu_seqlens.to(torch.int32).contiguous(),
                                state_pool, slots.to(torch.int32).contiguous(),
                                None if has_state is None else has_state.contiguous(),
                                float(scale), b.name)


def decode(q, k, v, state_pool, slots, slope, *, scale=1.0, backend=None):
    """One generation step for a batch of requests whose states live in a pool.

    Args:
        q, k: (B, H, D); v: (B, H, E): one token per request.
        state_pool: float32 (num_slots, H, D, E), contiguous: state_pool[slots[b]] becomes
            λ state + k_bᵀ v_b in place.
        slots: int32/int64 (B,): distinct non-negative slots < num_slots, or negative for a
            padding row (output 0, no state read or written).
        slope: None (no decay) or a float tensor (H,), >= 0.
        scale, backend: as in prefill.

    Returns:
        o (B, H, E) in q's dtype: scale · q_b state_pool[slots[b]] (after the update).
    """
    checks.check_pool_decode(q, k, v, state_pool, slots, slope)
    q4, k4, v4 = q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2)
    b = dispatch.select(backend, q4, k4, v4)
    b = dispatch.providing("pool_decode", b, q4, k4, v4)
    # a step's host time is most of its time at small B: the common case (int32 slots, no
    # input that requires grad) skips the no-op conversion and the no_grad context
    if slots.dtype != torch.int32 or not slots.is_contiguous():
        slots = slots.to(torch.int32).contiguous()
    slope = _slope(slope, q)
    args = (q, k, v, state_pool, slots, slope, float(scale), b.name)
    if not (q.requires_grad or k.requires_grad or v.requires_grad
            or (slope is not None and slope.requires_grad)):
        return ops.pool_decode(*args)
    with torch.no_grad():  # forward only: the output carries no graph
        return ops.pool_decode(*args)
