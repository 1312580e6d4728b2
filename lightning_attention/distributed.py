"""Sequence parallelism on torch.distributed: one sequence split across the ranks of a group.

Rank i of `group` holds the i-th contiguous slice of the sequence, (B, H, N_i, ·); slices may
differ in length (zero included). Only D×E states cross ranks, never tokens. With λ = exp(-s),
slice j ending at offset e_j and starting at offset b_j, and g_jr = b_r − e_j ≥ 0 the number of
tokens between the end of slice j and the start of slice r:

forward (one all-gather of the per-rank states and lengths)
    S_r     = Σ_t λ^{N_r−1−t} k_tᵀ v_t                  # this slice alone, from a zero state
    S_in,r  = Σ_{j<r} λ^{g_jr} S_j                       # the state entering slice r
    o       = lightning_attn(q, k, v, slope, initial_state=S_in,r)

backward (one all-gather of the per-rank G_m)
    G_m     = c Σ_t λ^{t+1} q_tᵀ do_t                     # dL/dS_in,m from slice m's outputs
    dS_r    = Σ_{m>r} λ^{g_rm} G_m                       # dL/d(final state of slice r)
    dq, dk, dv, τ = the local op's backward with (do, dS_r), initial state S_in,r
    d slope = −Σ_t τ_t                                     # this rank's share

The local op applies S_in in its kernels (c λ^{t+1} q_t S_in) and turns dS_r into the dk, dv
terms of the later slices' use of S_r, so both exchanges cost one state-only pass over
(k, v) or (q, do) (the backend's `state`, lightning_attention/kernels) and never touch the outputs. The last rank skips the first pass and the
first rank the second (nobody reads their result). Every decay is exp(−s·n) with n ≥ 0: no
exponent can overflow at any length.

d slope needs no exchange and no global position. The ranks form a chain: the state entering
rank r+1 is rank r's final state F_r = λ^{N_r} S_in,r + S_r, and dS_r is dL/dF_r. By the
chain rule, dL/d log λ is the sum over the ranks of the derivative of each rank's part,
o_r·do_r + <dS_r, F_r>, with its incoming state S_in,r held fixed; that is what the local
op's terms τ add up to, since it gets S_in,r as its initial state and dS_r as the gradient
of its final state (docs/DSLOPE.md).

Communication per call: two all-gathers of P·B·H·D·E state elements, independent of N; no
point-to-point chain. Extra memory: S_in,r saved for the backward, and the state pass's
per-segment partial states (Triton) or one scaled copy of k or q (the torch backend). The gradient of slope is each rank's
share of the whole sequence's gradient (sum it over the group, as for every weight that
sees only local tokens).
"""
import torch
import torch.distributed as dist

from . import checks, dispatch, ops
from .layout import state_dtype
from .api import lightning_attn

#: One tensor from every rank into one tensor (renamed in newer PyTorch).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def lightning_attn_sp(q, k, v, slope=None, *, scale=1.0, group=None, backend=None):
    """lightning_attn over a sequence split across the ranks of `group` (sequence parallelism).

    Args:
        q, k: (B, H, N_r, D); v: (B, H, N_r, E): this rank's contiguous slice of the sequence,
            rank i of `group` holding the i-th slice. N_r may differ between ranks (0 too);
            B, H, D, E, the dtype and `slope` must be the same on every rank.
        slope: None or (H,), as for lightning_attn.
        scale: as for lightning_attn.
        group: a torch.distributed process group (None: the default group). NCCL for GPU
            tensors, gloo for CPU tensors.
        backend: the backend of the local lightning_attn call (None: auto).

    Returns:
        o (B, H, N_r, E): this rank's slice of the output of lightning_attn on the whole
        sequence. Gradients flow to q, k, v and slope; the gradient of slope on each rank is
        its share, and the sum over the group is the gradient of the whole sequence (like
        every weight that sees only local tokens: all-reduce it over the group).

    Each call is a collective: every rank of the group must call it, in the same order.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("lightning_attn_sp: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first (or use lightning_attn)")
    if dist.get_rank(group) < 0:
        raise ValueError("lightning_attn_sp: this process is not a member of `group`")
    if dist.get_world_size(group) == 1:
        return lightning_attn(q, k, v, slope, scale=scale, backend=backend)
    checks.check_attn(q, k, v, slope, None, None)
    name = dispatch.select(backend, q, k, v).name
    if slope is not None:
        slope = slope.to(state_dtype(q)).contiguous()
    return _SequenceParallel.apply(q, k, v, slope, float(scale), group, name)


class _SequenceParallel(torch.autograd.Function):
    """(q, k, v, slope) of this rank's slice → its o, through the local op's kernels with the
    exchanged states (module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, slope, scale, group, backend):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        log_decay = _log_decay(slope, q.shape[1], q)
        N = q.shape[2]
        if rank == world - 1:  # nobody after this rank reads its state
            s_loc = _zero_state(k, v)
        else:
            s_loc = _state(k, v, slope, 1.0, True, backend)
        states, lengths = _all_gather(s_loc, N, group)
        before, after = _gaps(lengths, rank)
        s_in = None
        if rank > 0:
            s_in = torch.einsum("ph,pbhde->bhde", _decays(log_decay, before, states.dtype),
                                states).contiguous()
        o, _, kept = ops.fwd(q, k, v, slope, s_in, None, scale, False, backend)
        ctx.save_for_backward(q, k, v, slope, s_in, log_decay, after, kept)
        ctx.scale, ctx.group, ctx.rank, ctx.world, ctx.backend = scale, group, rank, world, backend
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, slope, s_in, log_decay, after, kept = ctx.saved_tensors
        if ctx.rank == 0:  # nobody before this rank reads its G
            g_loc = _zero_state(q, do)
        else:
            g_loc = _state(q, do, slope, ctx.scale, False, ctx.backend)
        gs, _ = _all_gather(g_loc, None, ctx.group)
        dfinal = None
        if ctx.rank < ctx.world - 1:
            dfinal = torch.einsum("ph,pbhde->bhde", _decays(log_decay, after, gs.dtype),
                                  gs).contiguous()
        if do.stride(-1) != 1:
            do = do.contiguous()
        need_dslope = slope is not None and ctx.needs_input_grad[3]
        dq, dk, dv, _, terms = ops.bwd(do, dfinal, q, k, v, slope, s_in, None, ctx.scale,
                                       need_dslope, kept, ctx.backend)
        dslope = None
        if need_dslope:
            dslope = ops._slope_grad(terms).to(slope.dtype)
        return dq, dk, dv, dslope, None, None, None


def _zero_state(a, b):
    return torch.zeros(a.shape[0], a.shape[1], a.shape[3], b.shape[3],
                       dtype=state_dtype(a), device=a.device)


def _state(a, b, slope, scale, to_end, backend):
    """The state-only pass (lightning_attention/kernels), zeros for an empty slice."""
    if a.numel() == 0 or b.numel() == 0:
        return _zero_state(a, b)
    return dispatch.state_pass(dispatch.BACKENDS[backend], a, b)(a, b, slope, scale, to_end)


def _all_gather(x, length, group):
    """All-gather a (B, H, D, E) state (and, unless `length` is None, this rank's length N_r)
    in one collective: (P, B, H, D, E) and (P,) int64 on x's device (or None). The length
    rides along as the bytes of an int64 in the last slots of each rank's row."""
    world = dist.get_world_size(group)
    numel = x.numel()
    extra = 0 if length is None else 8 // x.element_size()
    row = torch.empty(numel + extra, dtype=x.dtype, device=x.device)
    row[:numel].copy_(x.reshape(-1))
    if extra:
        row[numel:].view(torch.int64).fill_(length)
    rows = torch.empty(world * (numel + extra), dtype=x.dtype, device=x.device)
    _all_gather_single(rows, row, group=group)
    rows = rows.view(world, numel + extra)
    gathered = rows[:, :numel].view(world, *x.shape)
    lengths = rows[:, numel:].contiguous().view(torch.int64).view(world) if extra else None
    return gathered, lengths


def _log_decay(slope, H, like):
    """s = −log λ as a float64 (H,) tensor on like's device (zeros without decay)."""
    if slope is None:
        return torch.zeros(H, dtype=torch.float64, device=like.device)
    return slope.detach().to(torch.float64)


def _gaps(lengths, rank):
    """Tokens between the slices, float64 (P,): before[j] = b_rank − e_j for j < rank and
    after[m] = b_m − e_rank for m > rank; −1 marks the other entries."""
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    idx = torch.arange(lengths.numel(), device=lengths.device)
    before = torch.where(idx < rank, starts[rank] - ends, -1).double()
    after = torch.where(idx > rank, starts - ends[rank], -1).double()
    return before, after


def _decays(log_decay, gaps, dtype):
    """λ^gap as (P, H) in `dtype`, zero where gap < 0 marks no pair: exp(−s·gap), gap ≥ 0."""
    w = torch.exp(-gaps.clamp(min=0)[:, None] * log_decay[None, :])
    return torch.where(gaps[:, None] >= 0, w, 0.0).to(dtype)

