"""Sequence parallelism on torch.distributed: one sequence split across the ranks of a group.

Rank i of `group` holds the i-th contiguous slice of the sequence, (B, H, N_i, ·); slices may
differ in length (zero included). Only D×E states cross ranks, never tokens. With λ = exp(-s),
slice j ending at offset e_j and starting at offset b_j, and g_jr = b_r − e_j ≥ 0 the number of
tokens between the end of slice j and the start of slice r:

forward (one all-gather of the per-rank states and lengths)
    o_loc, S_r = lightning_attn(q, k, v, slope, output_final_state=True)  # from a zero state
    S_in,r     = Σ_{j<r} λ^{g_jr} S_j                       # the state entering slice r
    o_t        = o_loc,t + c λ^{t+1} q_t S_in,r               # t: local position, 0-based

backward (one all-gather of the per-rank dS_in)
    dS_in,r    = c Σ_t λ^{t+1} q_tᵀ do_t
    dS_r       = Σ_{m>r} λ^{g_rm} dS_in,m          # into the local op's final state
    dq_t      += c λ^{t+1} do_t S_in,rᵀ

and the local op's autograd turns (do, dS_r) into its dq, dk, dv and d slope. d slope has two
more sources here, both as d/d log λ (d slope = −d/d log λ):
    the λ^{t+1} factor:     Σ_t (t+1) q_t·dq_extra,t    (dq_extra: the dq_t term above)
    the combination:        Σ_{m>r} g_rm λ^{g_rm} <S_r, dS_in,m>
(each pair (j, m) of the combination is counted once, on rank j). Every decay is
exp(−s·n) with n ≥ 0: no exponent can overflow at any length.

Communication per call: two all-gathers of P·B·H·D·E state elements, independent of N; no
point-to-point chain. Extra memory: S_in,r saved for the backward, and one scaled copy of q
(forward) or do (backward) while the correction GEMMs run. The gradient of slope is each
rank's share of the whole sequence's gradient (sum it over the group, as for every weight
that sees only local tokens).
"""
import torch
import torch.distributed as dist

from .api import lightning_attn
from .layout import empty_like_layout, is_bnhd
from .ops import _rowdot

#: bmm with a float32 result from 16-bit operands (torch >= 2.8 on CUDA).
_HAS_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")
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
    o_loc, state = lightning_attn(q, k, v, slope, scale=scale, output_final_state=True,
                                  backend=backend)
    return _StateExchange.apply(o_loc, state, q, slope, float(scale), group)


class _StateExchange(torch.autograd.Function):
    """(o_loc, S_r, q, slope) → o: the cross-rank part of lightning_attn_sp (module docstring)."""

    @staticmethod
    def forward(ctx, o_loc, state, q, slope, scale, group):
        rank = dist.get_rank(group)
        states, lengths = _all_gather(state, q.shape[2], group)
        log_decay = _log_decay(slope, q.shape[1], state)
        before, after = _gaps(lengths, rank)
        s_in = torch.einsum("ph,pbhde->bhde", _decays(log_decay, before, states.dtype), states)
        o = o_loc.clone() if rank == 0 else _add_correction(o_loc, q, s_in, log_decay, scale)
        ctx.save_for_backward(q, slope, state, s_in, after)
        ctx.scale, ctx.group, ctx.rank = scale, group, rank
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, slope, state, s_in, after = ctx.saved_tensors
        log_decay = _log_decay(slope, q.shape[1], state)
        need_dslope = slope is not None and ctx.needs_input_grad[3]
        if ctx.rank == 0:  # S_in = 0: no dq term, and no rank before this one wants dS_in
            ds_in, dq, dlog = torch.zeros_like(state), None, None
        else:
            ds_in, dq, dlog = _correction_grads(do, q, s_in, log_decay, ctx.scale, need_dslope)
        ds_ins, _ = _all_gather(ds_in, None, ctx.group)
        w_out = _decays(log_decay, after, ds_ins.dtype)                      # (P, H)
        dstate = torch.einsum("ph,pbhde->bhde", w_out, ds_ins)
        dslope = None
        if need_dslope:
            inner = torch.einsum("bhde,pbhde->ph", state.double(), ds_ins.double())
            combine = (after.clamp(min=0)[:, None] * w_out.double() * inner).sum(0)
            dlog = combine if dlog is None else dlog + combine
            dslope = (-dlog).to(slope.dtype)
        dq = dq if ctx.needs_input_grad[2] else None
        return do, dstate, dq, dslope, None, None


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


def _token_decay(log_decay, N, scale, dtype):
    """c λ^{t+1} for t in [0, N), as (1, H, N, 1) in `dtype` (exponents computed in float64)."""
    t = torch.arange(1, N + 1, dtype=torch.float64, device=log_decay.device)
    return (scale * torch.exp(-log_decay[:, None] * t[None, :])).to(dtype)[None, :, :, None]


def _scaled(x, w):
    """x ⊙ w in x's dtype, rounded once (the product is formed in w's precision)."""
    return torch.mul(x, w, out=torch.empty_like(x))


def _batched(x):
    """(B, H, M, K) → (B·H, M, K): a view when the layout allows, else a copy."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _in_layout(x, like):
    """x (B, H, N, ·) in `like`'s memory layout (BHND or BNHD)."""
    if is_bnhd(x) == is_bnhd(like):
        return x
    return empty_like_layout(like, x.shape[-1], dtype=x.dtype).copy_(x)


def _add_correction(o_loc, q, s_in, log_decay, scale):
    """o = o_loc + c λ^{t+1} q_t S_in in o_loc's dtype and layout: one scaled copy of q and
    one GEMM whose epilogue adds o_loc (16-bit operands and float32 accumulation on a GPU,
    the state rounded to q's dtype as the kernels round it)."""
    B, H, N, E = o_loc.shape
    qd = _scaled(q, _token_decay(log_decay, N, scale, s_in.dtype))
    o = torch.baddbmm(_batched(o_loc), _batched(qd), _batched(s_in.to(q.dtype)))
    return _in_layout(o.view(B, H, N, E), o_loc)


def _correction_grads(do, q, s_in, log_decay, scale, need_dslope):
    """The gradients of o_t += c λ^{t+1} q_t S_in, with w_t = c λ^{t+1}:

        dS_in = Σ_t q_tᵀ (w_t do_t)    (D, E) per (b, h), in the state dtype
        dq_t  = (w_t do_t) S_inᵀ        in q's dtype and layout

    and with need_dslope the d/d log λ of the term, Σ_t (t+1) q_t·dq_t, float64 (H,)."""
    B, H, N, D = q.shape
    acc = s_in.dtype
    dod = _scaled(do, _token_decay(log_decay, N, scale, acc))
    qt = _batched(q).transpose(1, 2)
    if q.is_cuda and q.dtype != acc and _HAS_BMM_OUT_DTYPE:   # 16-bit operands, float32 sums
        ds_in = torch.ops.aten.bmm.dtype(qt, _batched(dod), acc)
    else:
        ds_in = torch.bmm(qt.to(acc), _batched(dod).to(acc))
    dq = torch.bmm(_batched(dod), _batched(s_in.to(q.dtype)).transpose(1, 2))
    dq = _in_layout(dq.view(B, H, N, D), q)
    dlog = None
    if need_dslope:
        t1 = torch.arange(1, N + 1, dtype=torch.float64, device=q.device)
        dlog = (_rowdot(q, dq).double() * t1).sum(dim=(0, 2))
    return ds_in.view_as(s_in), dq, dlog
