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
    dS_r       = Σ_{m>r} λ^{g_rm} dS_in,m                     # flows into the local op's final state
    dq_t      += c λ^{t+1} do_t S_in,rᵀ

and the local op's autograd turns (do, dS_r) into its dq, dk, dv and d slope. d slope has two
more sources here, both as d/d log λ (d slope = −d/d log λ):
    the λ^{t+1} factor:     Σ_t (t+1) q_t·dq_extra,t    (dq_extra: the dq_t term above)
    the combination:        Σ_{m>r} g_rm λ^{g_rm} <S_r, dS_in,m>
(each pair (j, m) of the combination is counted once, on rank j). Every decay is
exp(−s·n) with n ≥ 0: no exponent can overflow at any length.

Communication per call: two all-gathers of P·B·H·D·E state elements, independent of N.
"""
import torch
import torch.distributed as dist

from .api import lightning_attn
from .checks import state_dtype
from .layout import empty_like_layout

#: Tokens per step of the correction GEMMs: bounds the temporaries to a slice of the sequence.
_CHUNK_ELEMENTS = 1 << 26
#: bmm with float32 output from 16-bit operands (tensor cores, no rounding of the product).
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
    if dist.get_world_size(group) == 1:
        return lightning_attn(q, k, v, slope, scale=scale, backend=backend)
    o_loc, state = lightning_attn(q, k, v, slope, scale=scale, output_final_state=True,
                                  backend=backend)
    return _StateExchange.apply(o_loc, state, q, slope, float(scale), group)


class _StateExchange(torch.autograd.Function):
    """(o_loc, S_r, q, slope) → o: the cross-rank part of lightning_attn_sp (module docstring)."""

    @staticmethod
    def forward(ctx, o_loc, state, q, slope, scale, group):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        states, lengths = _all_gather(state, q.shape[2], group)
        log_decay = _log_decay(slope, q.shape[1], state)
        before, after = _gaps(lengths, rank)
        s_in = torch.einsum("ph,pbhde->bhde", _decays(log_decay, before, states.dtype), states)
        o = o_loc.clone() if rank == 0 else _add_correction(o_loc, q, s_in, log_decay, scale)
        ctx.save_for_backward(q, slope, state, s_in, after)
        ctx.scale, ctx.group, ctx.rank = scale, group, rank
        return o

    @staticmethod
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


def _chunks(q):
    B, H, N, D = q.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, B * H * max(D, 1)))
    return [(a, min(a + step, N)) for a in range(0, N, step)]


def _token_decay(log_decay, a, b, scale, acc):
    """c λ^{t+1} for t in [a, b), as (1, H, b − a, 1) in `acc`."""
    t = torch.arange(a + 1, b + 1, dtype=torch.float64, device=log_decay.device)
    return (scale * torch.exp(-log_decay[:, None] * t[None, :])).to(acc)[None, :, :, None]


def _matmul(a, b, acc):
    """a @ b over (B, H, ·, ·) with the result in `acc` (float32 or float64). 16-bit `a`:
    the product of 16-bit operands (b rounded to a's dtype, as the kernels round the state),
    accumulated and returned in float32; on the CPU, in float32 throughout."""
    if a.dtype == acc:
        return a @ b.to(acc)
    if a.is_cuda and _HAS_BMM_OUT_DTYPE:
        B, H, M, K = a.shape
        out = torch.bmm(a.reshape(B * H, M, K), b.to(a.dtype).reshape(B * H, K, -1),
                        out_dtype=acc)
        return out.view(B, H, M, -1)
    return a.to(acc) @ b.to(acc)


def _add_correction(o_loc, q, s_in, log_decay, scale):
    """o = o_loc + c λ^{t+1} q_t S_in, in o_loc's dtype and layout."""
    acc = s_in.dtype
    o = empty_like_layout(o_loc, o_loc.shape[-1])
    for a, b in _chunks(q):
        corr = _matmul(q[:, :, a:b], s_in, acc) * _token_decay(log_decay, a, b, scale, acc)
        o[:, :, a:b] = o_loc[:, :, a:b] + corr
    return o


def _correction_grads(do, q, s_in, log_decay, scale, need_dslope):
    """The gradients of o_t += c λ^{t+1} q_t S_in: dS_in (B, H, D, E) in the state dtype, dq
    in q's dtype and layout, and with need_dslope its d/d log λ Σ_t (t+1) q_t·dq_t as
    float64 (H,), from dq before it is rounded to q's dtype."""
    acc = s_in.dtype
    ds_in = torch.zeros_like(s_in)
    dq = empty_like_layout(q, q.shape[-1])
    dlog = torch.zeros(q.shape[1], dtype=torch.float64, device=q.device) if need_dslope else None
    for a, b in _chunks(q):
        w = _token_decay(log_decay, a, b, scale, acc)
        qc, doc = q[:, :, a:b], do[:, :, a:b]
        ds_in += _matmul((qc.to(acc) * w).to(qc.dtype).transpose(-1, -2), doc, acc)
        dqc = _matmul(doc, s_in.transpose(-1, -2), acc) * w
        dq[:, :, a:b] = dqc
        if need_dslope:
            t1 = torch.arange(a + 1, b + 1, dtype=torch.float64, device=q.device)
            terms = (qc.to(acc) * dqc).sum(-1).double()                       # (B, H, b − a)
            dlog += (terms * t1).sum(dim=(0, 2))
    return ds_in, dq, dlog
