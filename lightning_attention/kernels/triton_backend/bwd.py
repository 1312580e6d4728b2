"""Backward of the block form.

With G_t = dL/dS_t = c q_t^T do_t + lam G_{t+1} (G_{N-1} also gets dfinal_state):
  dq_t = c do_t S_t^T                    -> the forward's pass 2 with (q, k, v) = (do, v, k)
                                            and the forward's states read transposed;
  dv_t = k_t G_t,  dk_t = v_t G_t^T      -> `_seg_dkdv_kernel`, walking blocks backwards;
  d initial_state = lam G_0.
Within a block [t0, t0+L) the carry Cr = lam G_{t0+L} (dfinal_state for the last block):
  dV = c ((K Q^T) .* M^T) dO + diag(lam^(L-1-i)) K Cr
  dK = c ((V dO^T) .* M^T) Q + diag(lam^(L-1-i)) V Cr^T
  Cr <- lam^L Cr + c (diag(lam^(i+1)) Q)^T dO.
Segments get their carries from a reverse pass 1 + scan (fwd.seg_states, REVERSE).
No atomics: when E needs several V tiles, each tile writes its dK part in float32 and the
parts are summed in a fixed order.
d slope terms (docs/DSLOPE.md), each from float32 tiles of its own size: the pairs inside a
block from P and dP in `_seg_dkdv_kernel` (no extra product), the state part in the dq pass
from the state and its moment (fwd._seg_out_kernel: two products more per block, the
moment's update and sum_i lam^(i+1) q_i^T do_i, and with 16-bit inputs every operand that
carries float32 values split into two 16-bit parts); the parts of several V tiles are summed
as dK's.
"""
import torch
import triton
import triton.language as tl

from ...layout import empty_like_layout, no_state, num_states
from . import _common as C
from ._common import kernel
from . import fwd as F


def _seg_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, slope_ptr, dfin_ptr, cr_ptr, dinit_ptr,
    terms_ptr, seq_ptr, segj_ptr, bos_ptr, eos_ptr,
    N, H, K, V, SEG, NS,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    s_dkp, s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn, s_tp,
    scale,
    HAS_DFINAL: tl.constexpr, STORE_DINIT: tl.constexpr, HAS_DECAY: tl.constexpr,
    TERMS: tl.constexpr, VARLEN: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, DOT_PREC: tl.constexpr, INTERP: tl.constexpr,
):
    """dK (part iv, or whole when one V tile) and dV[:, tile iv] of one segment; with
    TERMS, the pair part of the d slope terms (docs/DSLOPE.md) into terms[iv] (NVT, B, H, N):
    query j of a block gets sum_i (j - i) P_ij dP_ij with P = c lam^(j-i) k_i.q_j (A below)
    and dP = v_i.do_j over tile iv, both float32 tiles that the block computes anyway."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    NVT = (V + BV - 1) // BV
    g = pid // NVT
    iv = pid % NVT
    i_seq, b, j, nseg, s0, s1, n_blk = F._segment(g, seq_ptr, segj_ptr, bos_ptr, eos_ptr, N,
                                                  SEG, NS, BT, VARLEN)
    if VARLEN:
        if i_seq < 0:  # an unused slot of the table
            return

    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    mk = offs_k < K
    mv = offs_v < V
    ms = mk[:, None] & mv[None, :]
    s_offs = offs_k[:, None] * V + offs_v[None, :]
    # carry entering this segment from the right
    Cr = tl.full([BK, BV], 0.0, dtype=tl.float32)
    if j < nseg - 1:
        Cr = tl.load(cr_ptr + (g.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0).to(tl.float32)
    else:
        if HAS_DFINAL:
            Cr = tl.load(dfin_ptr + (i_seq.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0).to(tl.float32)

    bh = b.to(tl.int64)
    hh = h.to(tl.int64)
    q_base = q_ptr + bh * s_qb + hh * s_qh
    k_base = k_ptr + bh * s_kb + hh * s_kh
    v_base = v_ptr + bh * s_vb + hh * s_vh
    do_base = do_ptr + bh * s_ob + hh * s_oh
    dk_base = dk_ptr + iv.to(tl.int64) * s_dkp + bh * s_dkb + hh * s_dkh
    dv_base = dv_ptr + bh * s_dvb + hh * s_dvh
    t_base = terms_ptr + iv.to(tl.int64) * s_tp + (bh * H + hh) * N
    diff = offs_t[None, :] - offs_t[:, None]  # [i, j] = j - i  (j: the later position)
    if HAS_DECAY:
        sl = tl.load(slope_ptr + h).to(tl.float32)
        Mt = tl.where(diff >= 0, tl.exp(-sl * tl.maximum(diff, 0).to(tl.float32)), 0.0) * scale
        qdec = tl.exp(-sl * (offs_t + 1).to(tl.float32))
    else:
        Mt = tl.where(diff >= 0, scale, 0.0)
    for ib in range(0, n_blk):
        t0 = s0 + (n_blk - 1 - ib) * BT
        lb = tl.minimum(s1 - t0, BT)
        mt = offs_t < lb
        rows = (t0 + offs_t).to(tl.int64)
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        q = tl.load(q_base + rows[:, None] * s_qn + offs_k[None, :], mask=mtk, other=0.0)
        k = tl.load(k_base + rows[:, None] * s_kn + offs_k[None, :], mask=mtk, other=0.0)
        v = tl.load(v_base + rows[:, None] * s_vn + offs_v[None, :], mask=mtv, other=0.0)
        do = tl.load(do_base + rows[:, None] * s_on + offs_v[None, :], mask=mtv, other=0.0)
        A = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * Mt
        vdo = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        if TERMS:  # first, so that no tile outlives its use for them; A is zero where j < i
            pairs = tl.trans(A * vdo * diff.to(tl.float32))
            C.store_rows(t_base + rows, C.row_sums(pairs, INTERP), mt, INTERP)
        dv = tl.dot(A.to(do.dtype), do, input_precision=DOT_PREC)
        Bm = vdo * Mt
        dk = tl.dot(Bm.to(q.dtype), q, input_precision=DOT_PREC)
        Cc = Cr.to(q.dtype)
        if HAS_DECAY:
            w = tl.where(mt, tl.exp(-sl * tl.maximum(lb - 1 - offs_t, 0).to(tl.float32)), 0.0)
            dv += tl.dot((k * w[:, None]).to(k.dtype), Cc, input_precision=DOT_PREC)
            dk += tl.dot((v * w[:, None]).to(v.dtype), tl.trans(Cc), input_precision=DOT_PREC)
            Cr = Cr * tl.exp(-sl * lb.to(tl.float32)) + scale * tl.dot(
                tl.trans((q * qdec[:, None]).to(q.dtype)), do, input_precision=DOT_PREC)
        else:
            dv += tl.dot(k, Cc, input_precision=DOT_PREC)
            dk += tl.dot(v, tl.trans(Cc), input_precision=DOT_PREC)
            Cr += scale * tl.dot(tl.trans(q), do, input_precision=DOT_PREC)
        tl.store(dv_base + rows[:, None] * s_dvn + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mtv)
        tl.store(dk_base + rows[:, None] * s_dkn + offs_k[None, :], dk.to(dk_ptr.dtype.element_ty), mask=mtk)
    if STORE_DINIT:
        if j == 0:
            tl.store(dinit_ptr + (i_seq.to(tl.int64) * H + h) * K * V + s_offs, Cr, mask=ms)


_seg_dkdv_kernel = kernel(_seg_dkdv_kernel)


def bwd(do, dfinal_state, q, k, v, slope, scale, initial_state, cu_seqlens, need_dslope,
        kept=None):
    B, H, N, K = q.shape
    V = v.shape[-1]
    dq = empty_like_layout(q, K)
    dk = empty_like_layout(k, K)
    dv = empty_like_layout(v, V)
    dinit = None
    if initial_state is not None:
        dinit = torch.empty(num_states(q, cu_seqlens), H, K, V, dtype=torch.float32, device=q.device)
    prec = C.dot_prec(q.dtype)
    BK, BV = F._bv(K, V)
    NVT = triton.cdiv(V, BV)
    table = F.make_table(q, cu_seqlens, NVT)

    # dq: the forward's pass 2 on (do, v, k) with the forward states transposed, those the
    # forward kept when it did (and the state part of the d slope terms, from the states'
    # moments, which only this pass computes)
    fstates = moments = None
    if not table.single and kept is not None and kept.shape[0] > 0 and not need_dslope:
        assert kept.shape == (table.G, H, K, V), "kept states of another plan"
        fstates = kept
    elif not table.single:
        fstates = F.seg_states(k, v, slope, 1.0, initial_state, table, H, K, V, False, prec,
                               moment=need_dslope)
        if need_dslope:
            fstates, moments = fstates
    tq = F.seg_out(do, v, k, dq, slope, scale, initial_state, fstates, None, table, H, V, K, True,
                   prec, terms_x=q if need_dslope else None, moments=moments,
                   dfinal=dfinal_state if need_dslope else None)
    del fstates, moments

    # dk, dv: reverse walk with carries
    carries = None
    if not table.single:
        carries = F.seg_states(q, do, slope, scale, dfinal_state, table, H, K, V, True, prec)
    if NVT > 1:
        dk_out = torch.empty(NVT, B, H, N, K, dtype=torch.float32, device=q.device)
        s_dk = (dk_out.stride(0), dk_out.stride(1), dk_out.stride(2), dk_out.stride(3))
    else:
        dk_out = dk
        s_dk = (0, dk.stride(0), dk.stride(1), dk.stride(2))
    tk = None
    if need_dslope:
        tk = torch.empty(NVT, B, H, N, dtype=torch.float32, device=q.device)
    dummy = dv
    seq_of, j_of, bos, eos = table.args(q.device)
    _seg_dkdv_kernel[(table.G * NVT, H)](
        q, k, v, do, dk_out, dv, slope if slope is not None else dummy,
        dfinal_state if dfinal_state is not None else dummy,
        carries if carries is not None else dummy, dinit if dinit is not None else dummy,
        tk if tk is not None else dummy, seq_of, j_of, bos, eos,
        N, H, K, V, table.seg, table.NS,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        *s_dk, dv.stride(0), dv.stride(1), dv.stride(2), B * H * N,
        float(scale),
        HAS_DFINAL=dfinal_state is not None, STORE_DINIT=dinit is not None,
        HAS_DECAY=slope is not None, TERMS=need_dslope, VARLEN=table.varlen,
        BT=C.block_tokens("bwd", q.dtype), BK=BK, BV=BV,
        DOT_PREC=prec, INTERP=C.interpret(),
        num_warps=C.CONFIG["bwd_warps"], num_stages=C.CONFIG["bwd_stages"])
    if NVT > 1:
        dk.copy_(dk_out.sum(0))
    terms = no_state(q)
    if need_dslope:
        terms = tq + (tk[0] if NVT == 1 else tk.sum(0))
    return dq, dk, dv, (dinit if dinit is not None else no_state(q)), terms
