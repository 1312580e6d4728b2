"""The custom ops (`torch.ops.lightning_attention.*`): fake kernels, registered autograd,
the d slope reduction, NVTX ranges, and the call into the chosen backend.

The backend is chosen before the op (api.py) and passed in by name, so that the op is
one graph node for torch.compile whatever serves it. Empty inputs (B, H or N = 0) are
answered here, and only here: backends never see them.
"""
import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from .dispatch import BACKENDS
from .layout import (empty_like_layout, kept_like, no_state, nothing_kept, num_states,
                     state_dtype)

#: NVTX ranges for every call (read once: the profiler's own switch covers the rest).
_NVTX = os.environ.get("LIGHTNING_ATTENTION_NVTX") == "1"


def _nvtx(op: str, backend: str, x: Tensor):
    """An NVTX range `lightning_attn.<op>.<backend>` when LIGHTNING_ATTENTION_NVTX=1 or under
    emit_nvtx/the profiler."""
    if x.is_cuda and (_NVTX or torch.autograd._profiler_enabled()):
        return torch.cuda.nvtx.range(f"lightning_attn.{op}.{backend}")
    return contextlib.nullcontext()


def _is_empty(q: Tensor, v: Tensor) -> bool:
    return q.numel() == 0 or v.numel() == 0


# ----------------------------------------------------------------------------- forward

@torch.library.custom_op("lightning_attention::fwd", mutates_args=())
def fwd(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor],
        initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float,
        output_final_state: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(o (B, H, N, E) in q's layout, final_state float32 or an empty tensor, what the
    backend keeps for the backward: float32 (n, H, D, E), n = 0 for nothing)."""
    if _is_empty(q, v):
        o = empty_like_layout(q, v.shape[-1]).zero_()
        if not output_final_state:
            return o, no_state(q), nothing_kept(q, v)
        B, H, _, D = q.shape
        state = (initial_state.clone() if initial_state is not None else
                 q.new_zeros(num_states(q, cu_seqlens), H, D, v.shape[-1], dtype=state_dtype(q)))
        return o, state, nothing_kept(q, v)
    with _nvtx("fwd", backend, q):
        return BACKENDS[backend].fwd(q, k, v, slope, scale, initial_state, cu_seqlens,
                                     output_final_state)


@fwd.register_fake
def _(q, k, v, slope, initial_state, cu_seqlens, scale, output_final_state, backend):
    o = empty_like_layout(q, v.shape[-1])
    H, D, E = q.shape[1], q.shape[3], v.shape[3]
    kept = kept_like(q, v)
    if not output_final_state:
        return o, no_state(q), kept
    return o, q.new_empty(num_states(q, cu_seqlens), H, D, E, dtype=state_dtype(q)), kept



# ---------------------------------------------------------------------------- backward

@torch.library.custom_op("lightning_attention::bwd", mutates_args=())
def bwd(do: Tensor, dfinal_state: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
        slope: Optional[Tensor], initial_state: Optional[Tensor],
        cu_seqlens: Optional[Tensor], scale: float, need_dslope: bool,
        kept: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv in the layouts of q, k, v; d initial_state, or empty without one;
    the per-token d slope terms τ (B, H, N) with need_dslope, else empty). `kept`: the
    same call's forward's third output, or None."""
    if _is_empty(q, v):
        dq, dk, dv = (empty_like_layout(x, x.shape[-1]).zero_() for x in (q, k, v))
        terms = q.new_zeros(q.shape[:3], dtype=state_dtype(q)) if need_dslope else no_state(q)
        if initial_state is None:
            return dq, dk, dv, no_state(q), terms
        ds0 = dfinal_state.clone() if dfinal_state is not None else torch.zeros_like(initial_state)
        return dq, dk, dv, ds0, terms
    with _nvtx("bwd", backend, q):
        return BACKENDS[backend].bwd(do, dfinal_state, q, k, v, slope, scale, initial_state,
                                     cu_seqlens, need_dslope, kept)


@bwd.register_fake
def _(do, dfinal_state, q, k, v, slope, initial_state, cu_seqlens, scale, need_dslope, kept,
      backend):
    grads = tuple(empty_like_layout(x, x.shape[-1]) for x in (q, k, v))
    ds0 = torch.empty_like(initial_state) if initial_state is not None else no_state(q)
    terms = q.new_empty(q.shape[:3], dtype=state_dtype(q)) if need_dslope else no_state(q)
    return (*grads, ds0, terms)


def _slope_grad(terms):
    """dL/d slope = −Σ_{batch, tokens} τ per head, float64 (H,): each sequence's terms τ add
    up to its dL/d log λ, final-state term included (docs/DSLOPE.md), and λ = exp(−slope)."""
    return -terms.double().sum(dim=(0, 2))


def _setup_context(ctx, inputs, output):
    q, k, v, slope, initial_state, cu_seqlens, scale, output_final_state, backend = inputs
    kept = output[2]
    ctx.mark_non_differentiable(kept)
    ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens, kept)
    ctx.scale, ctx.backend, ctx.output_final_state = scale, backend, output_final_state


def _backward(ctx, do, dfinal_state, _dkept):
    q, k, v, slope, initial_state, cu_seqlens, kept = ctx.saved_tensors
    if not ctx.output_final_state:
        dfinal_state = None
    elif dfinal_state is not None:
        dfinal_state = dfinal_state.to(state_dtype(q)).contiguous()
    if do.stride(-1) != 1:
        do = do.contiguous()
    need_dslope = slope is not None and ctx.needs_input_grad[3]
    dq, dk, dv, ds0, terms = bwd(do, dfinal_state, q, k, v, slope, initial_state, cu_seqlens,
                                 ctx.scale, need_dslope, kept, ctx.backend)
    dslope = None
    if need_dslope:
        dslope = _slope_grad(terms).to(slope.dtype)
    ds0 = ds0 if initial_state is not None and ctx.needs_input_grad[4] else None
    return dq, dk, dv, dslope, ds0, None, None, None, None


fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ decode

@torch.library.custom_op("lightning_attention::decode", mutates_args=("state",))
def decode(q: Tensor, k: Tensor, v: Tensor, state: Tensor, slope: Optional[Tensor],
           scale: float, backend: str) -> Tensor:
    """One token: state ← λ state + kᵀv in place; returns o = scale · q state, (B, H, E)."""
    if _is_empty(q, v):
        return q.new_empty(*q.shape[:2], v.shape[-1])
    with _nvtx("decode", backend, q):
        return BACKENDS[backend].decode(q, k, v, state, slope, scale)


@decode.register_fake
def _(q, k, v, state, slope, scale, backend):
    return q.new_empty(*q.shape[:2], v.shape[-1])


# ----------------------------------------------------------- serving: states in a pool

@torch.library.custom_op("lightning_attention::pool_prefill", mutates_args=("state_pool",))
def pool_prefill(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor], cu_seqlens: Tensor,
                 state_pool: Tensor, slots: Tensor, has_state: Optional[Tensor], scale: float,
                 backend: str) -> Tensor:
    """Packed sequences from and into pool rows (serving.prefill); returns o (1, H, T, E)."""
    if _is_empty(q, v):
        # every sequence is empty (or has no elements): its final state is where it started
        fresh = (slots >= 0) & (slots < state_pool.shape[0])
        if has_state is not None:
            fresh &= ~has_state
        state_pool[slots[fresh].long()] = 0
        return empty_like_layout(q, v.shape[-1]).zero_()
    with _nvtx("pool_prefill", backend, q):
        return BACKENDS[backend].pool_prefill(q, k, v, slope, scale, cu_seqlens, state_pool,
                                              slots, has_state)


@pool_prefill.register_fake
def _(q, k, v, slope, cu_seqlens, state_pool, slots, has_state, scale, backend):
    return empty_like_layout(q, v.shape[-1])


@torch.library.custom_op("lightning_attention::pool_decode", mutates_args=("state_pool",))
def pool_decode(q: Tensor, k: Tensor, v: Tensor, state_pool: Tensor, slots: Tensor,
                slope: Optional[Tensor], scale: float, backend: str) -> Tensor:
    """One token per row from and into pool rows (serving.decode); returns o (B, H, E)."""
    if _is_empty(q, v):
        return q.new_zeros(*q.shape[:2], v.shape[-1])
    with _nvtx("pool_decode", backend, q):
        return BACKENDS[backend].pool_decode(q, k, v, state_pool, slots, slope, scale)


@pool_decode.register_fake
def _(q, k, v, state_pool, slots, slope, scale, backend):
    return q.new_empty(*q.shape[:2], v.shape[-1])
