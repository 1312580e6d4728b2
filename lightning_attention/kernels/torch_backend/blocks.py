"""The `torch` backend: the block form with a running D×E state in float32 (float64 for
float64 inputs), O(N) memory, on the CPU and GPUs. Block size config.TORCH_BLOCK.

`fwd` and `bwd` also take `compute_dtype`: the matmul operands' dtype, the accumulation
dtype by default, or the inputs' dtype for the "plain PyTorch in the same dtype" error
yardstick of the tests.
"""
import torch

from ... import config
from ...layout import empty_like_layout, no_state, nothing_kept, num_states, state_dtype
from ...reference import decay_rate, seq_bounds


class _Block:
    """The decay factors of one block of L tokens (i, j: positions in the block):
    intra[i, j] = λ^{i-j} (i ≥ j, else 0), q_decay[i] = λ^{i+1}, k_decay[j] = λ^{L-1-j},
    total = λ^L. Every exponent is relative to the block, so none can overflow."""

    def __init__(self, s, L, acc, device):
        idx = torch.arange(L, device=device, dtype=acc)
        diff = idx[:, None] - idx[None, :]
        self.intra = torch.exp(-s * diff.clamp(min=0)) * (diff >= 0)   # (1, H, L, L)
        self.q_decay = torch.exp(-s * (idx + 1)[:, None])              # (1, H, L, 1)
        self.k_decay = torch.exp(-s * (L - 1 - idx)[:, None])          # (1, H, L, 1)
        self.total = torch.exp(-s * L)                                 # (1, H, 1, 1)


def _matmul(compute_dtype, acc):
    """a @ b with operands in `compute_dtype` and the result in `acc`."""
    return lambda a, b: (a.to(compute_dtype) @ b.to(compute_dtype)).to(acc)


def _blocks(N, block):
    return [(start, min(block, N - start)) for start in range(0, N, block)]


def _chunk_fwd(q, k, v, s, scale, state, compute_dtype, block):
    """Forward over one batch of equal-length sequences: (o, final_state) in the
    accumulation dtype (state's). s: (1, H, 1, 1); state: (B, H, D, E)."""
    acc = state.dtype
    mm = _matmul(compute_dtype, acc)
    o = q.new_zeros(*q.shape[:3], v.shape[-1], dtype=acc)
    for start, L in _blocks(q.shape[2], block):
        f = _Block(s, L, acc, q.device)
        qb, kb, vb = (x[:, :, start:start + L].to(acc) for x in (q, k, v))
        p = mm(qb, kb.transpose(-1, -2)) * f.intra
        o[:, :, start:start + L] = scale * (mm(p, vb) + mm(qb * f.q_decay, state))
        state = f.total * state + mm((kb * f.k_decay).transpose(-1, -2), vb)
    return o, state


def _chunk_bwd(do, dstate, q, k, v, s, scale, state, compute_dtype, block, need_dslope):
    """Backward of _chunk_fwd (the paper's Algorithm 2). A forward sweep recomputes the
    state entering each block and gives dQ; a reverse sweep carries dS, the gradient of
    the state leaving the block, and gives dK, dV and finally d initial_state:

        P = (Q Kᵀ) ⊙ M,  dP = (dO Vᵀ) ⊙ M
        dQ = c (dP K + Λq dO Sᵀ)            S: the state entering the block
        dK = c dPᵀ Q + Λk V dSᵀ,  dV = c Pᵀ dO + Λk K dS
        dS ← λ^L dS + c (Λq Q)ᵀ dO

    With need_dslope, the forward sweep also gives the d slope terms τ (the last returned
    value, else None) of docs/DSLOPE.md: beside S it carries the moment dS/d log λ
    (`moment`), token i of a block gets
        c [Σ_j (i − j) P_ij (dO Vᵀ)_ij + λ^{i+1} q_i ((i+1) S + moment) do_iᵀ]
    and the sequence's last token also <dS_final, the final state's moment>.
    """
    acc = state.dtype
    mm = _matmul(compute_dtype, acc)
    blocks = _blocks(q.shape[2], block)
    dq, dk, dv = (x.new_zeros(x.shape, dtype=acc) for x in (q, k, v))
    tau = q.new_zeros(q.shape[:3], dtype=acc) if need_dslope else None
    moment = torch.zeros_like(state)
    entering = []
    for start, L in blocks:
        f = _Block(s, L, acc, q.device)
        qb, kb, vb, dob = (x[:, :, start:start + L].to(acc) for x in (q, k, v, do))
        dp_raw = mm(dob, vb.transpose(-1, -2))
        dp = dp_raw * f.intra
        inter = mm(dob * f.q_decay, state.transpose(-1, -2))
        dq[:, :, start:start + L] = scale * (mm(dp, kb) + inter)
        entering.append(state)
        kv = (kb * f.k_decay).transpose(-1, -2)
        if need_dslope:
            idx = torch.arange(L, device=q.device, dtype=acc)
            p = mm(qb, kb.transpose(-1, -2)) * f.intra
            pairs = (p * dp_raw * (idx[:, None] - idx[None, :])).sum(-1)
            at_state = (qb * ((idx + 1)[:, None] * inter
                              + mm(dob * f.q_decay, moment.transpose(-1, -2)))).sum(-1)
            tau[:, :, start:start + L] = scale * (pairs + at_state)
            moment = f.total * (moment + L * state) + mm(kv * (L - 1 - idx), vb)
        state = f.total * state + mm(kv, vb)
    if need_dslope and blocks:
        tau[:, :, -1] += (dstate * moment).sum(dim=(-2, -1))
    for (start, L), state in zip(reversed(blocks), reversed(entering)):
        f = _Block(s, L, acc, q.device)
        qb, kb, vb, dob = (x[:, :, start:start + L].to(acc) for x in (q, k, v, do))
        p = mm(qb, kb.transpose(-1, -2)) * f.intra
        dp = mm(dob, vb.transpose(-1, -2)) * f.intra
        dk[:, :, start:start + L] = scale * mm(dp.transpose(-1, -2), qb) + mm(vb * f.k_decay, dstate.transpose(-1, -2))
        dv[:, :, start:start + L] = scale * mm(p.transpose(-1, -2), dob) + mm(kb * f.k_decay, dstate)
        dstate = f.total * dstate + scale * mm((qb * f.q_decay).transpose(-1, -2), dob)
    return dq, dk, dv, dstate, tau


def _per_sequence(q, cu_seqlens):
    """[(token slice, state slice)]: the whole batch, or each packed sequence."""
    if cu_seqlens is None:
        return [(slice(None), slice(None))]
    return [(slice(a, b), slice(i, i + 1))
            for i, (a, b) in enumerate(seq_bounds(cu_seqlens, q.shape[2]))]


def _setup(q, v, slope, initial_state, cu_seqlens, compute_dtype):
    B, H, _, D = q.shape
    acc = state_dtype(q)
    s = decay_rate(slope, H, torch.empty(0, device=q.device, dtype=acc))
    s0 = (initial_state.to(acc) if initial_state is not None
          else q.new_zeros(num_states(q, cu_seqlens), H, D, v.shape[-1], dtype=acc))
    return acc, s, s0, compute_dtype or acc, _per_sequence(q, cu_seqlens)


def fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state, *,
        compute_dtype=None, block=config.TORCH_BLOCK):
    """Tokens outside every (clamped) sequence get zeros."""
    acc, s, s0, cdt, parts = _setup(q, v, slope, initial_state, cu_seqlens, compute_dtype)
    o = empty_like_layout(q, v.shape[-1]).zero_()
    final = torch.empty_like(s0)
    for t, b in parts:
        o[:, :, t], final[b] = _chunk_fwd(q[:, :, t], k[:, :, t], v[:, :, t], s, scale, s0[b],
                                          cdt, block)
    return o, (final if output_final_state else no_state(q)), nothing_kept(q, v)


def bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope,
        kept=None, *, compute_dtype=None, block=config.TORCH_BLOCK):
    """`kept` is unused: this backend's forward keeps nothing."""
    acc, s, s0, cdt, parts = _setup(q, v, slope, initial_state, cu_seqlens, compute_dtype)
    dq, dk, dv = (empty_like_layout(x, x.shape[-1]).zero_() for x in (q, k, v))
    ds = dfinal_state.to(acc) if dfinal_state is not None else torch.zeros_like(s0)
    ds0 = torch.empty_like(s0)
    terms = q.new_zeros(q.shape[:3], dtype=acc) if need_dslope else no_state(q)
    for t, b in parts:
        dq[:, :, t], dk[:, :, t], dv[:, :, t], ds0[b], tau = _chunk_bwd(
            do[:, :, t], ds[b], q[:, :, t], k[:, :, t], v[:, :, t], s, scale, s0[b], cdt, block,
            need_dslope)
        if need_dslope:
            terms[:, :, t] = tau
    return dq, dk, dv, (ds0 if initial_state is not None else no_state(q)), terms


def decode(q, k, v, state, slope, scale):
    """One token: state ← λ state + kᵀv (in place); o = c q state. q, k (B, H, D), v (B, H, E)."""
    acc = state.dtype
    if slope is not None:
        state.mul_(torch.exp(-slope.to(acc)).view(1, -1, 1, 1))
    state.add_(k.to(acc).unsqueeze(-1) * v.to(acc).unsqueeze(-2))
    o = scale * (q.to(acc).unsqueeze(-2) @ state).squeeze(-2)
    return o.to(q.dtype)


#: bmm with a float32 result from 16-bit operands (torch >= 2.8 on CUDA).
_HAS_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")


def state(a, b, slope, scale, to_end):
    """Σ_t w_t a_tᵀ b_t per (b, h), (B, H, D, E) in the state dtype, with w_t = λ^{N-1-t}
    (to_end) or scale·λ^{t+1}: one scaled copy of a (the product formed in the state dtype,
    rounded once to a's dtype, as the kernels round decayed keys) and one GEMM with float32
    sums (16-bit operands on a GPU)."""
    acc = state_dtype(a)
    B, H, N, D = a.shape
    E = b.shape[-1]
    t = torch.arange(N, dtype=torch.float64, device=a.device)
    steps = (N - 1 - t) if to_end else (t + 1)
    w = torch.exp(-decay_rate(slope, H, t) * steps[:, None]) * (1.0 if to_end else scale)
    aw = torch.mul(a, w.to(acc), out=a.new_empty(a.shape))  # contiguous: the reshape below is a view
    at, bb = aw.reshape(B * H, N, D).transpose(1, 2), b.reshape(B * H, N, E)
    if a.is_cuda and a.dtype != acc and _HAS_BMM_OUT_DTYPE:
        s = torch.ops.aten.bmm.dtype(at, bb, acc)
    else:
        s = torch.bmm(at.to(acc), bb.to(acc))
    return s.view(B, H, D, E)

