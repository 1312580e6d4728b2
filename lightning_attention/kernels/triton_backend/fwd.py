"""Forward kernels of the block form, split into segments for parallelism.

Per (sequence, head), tokens are cut into segments of `seg` tokens (a multiple of BT):
  pass 1  `_seg_state_kernel`: each segment's local state  sum_t lam^(end-1-t) k_t^T v_t
          (only when a sequence has several segments; the last segment's is not needed);
  scan    `_seg_scan_kernel`: incoming state of segment j = lam^len(j-1) * in(j-1) + local(j-1),
          the first one being the initial state; written in place into the states buffer;
  pass 2  `_seg_out_kernel`: per segment, walk its BT-token blocks keeping S (K x BV, fp32)
          in registers: o = c [ ((Q K^T) .* M) V + diag(lam^(i+1)) Q S ],
          S <- lam^L S + (diag(lam^(L-1-i)) K)^T V; the last segment writes the final state.
Decays are only ever exp(-s * j) with 0 <= j <= seg: bounded exponents at any N and slope.
The same three kernels serve the backward (dq is this forward with q=do, k=v, v=k and
transposed states; pass 1 and the scan run in reverse for the dk/dv carries). For d slope,
pass 1 and the scan also give each segment's incoming moment, the state's derivative by
log lam (MOMENT), and pass 2 carries it beside S (TERMS; docs/DSLOPE.md).
"""
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ...layout import empty_like_layout, no_state, nothing_kept, num_states
from . import _common as C
from ._common import kernel


@C.device_function
def _segment(g, seq_ptr, segj_ptr, bos_ptr, eos_ptr, N, SEG, NS, BT: tl.constexpr,
             VARLEN: tl.constexpr):
    """Where segment g lies (SegTable): (its sequence i_seq, batch entry b, index j in the
    sequence, the sequence's segment count, its tokens [s0, s1) and their BT-blocks).
    i_seq < 0 marks an unused slot of a varlen table (the rest then describes sequence 0)."""
    if VARLEN:
        i_seq = tl.load(seq_ptr + g)
        j = tl.load(segj_ptr + g)
        bos = tl.load(bos_ptr + tl.maximum(i_seq, 0))
        eos = tl.load(eos_ptr + tl.maximum(i_seq, 0))
        b = i_seq * 0
    else:
        i_seq = g // NS
        j = g % NS
        bos = 0
        eos = N
        b = i_seq
    nseg = tl.maximum((eos - bos + SEG - 1) // SEG, 1)
    s0 = bos + j * SEG
    s1 = tl.minimum(s0 + SEG, eos)
    return i_seq, b, j, nseg, s0, s1, (s1 - s0 + BT - 1) // BT


def _seg_state_kernel(
    a_ptr, b_ptr, slope_ptr, st_ptr, mom_ptr,
    seq_ptr, segj_ptr, bos_ptr, eos_ptr,
    N, H, K, V, SEG, NS,
    s_ab, s_ah, s_an, s_bb, s_bh, s_bn,
    scale,
    HAS_DECAY: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr,
    OWN_SLOT: tl.constexpr, MOMENT: tl.constexpr, SPLIT: tl.constexpr, HORIZON_LOG2: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Local (zero-start) state of one segment, K x V tile (ik, iv), weights lam^(end-1-t)
    (forward) or lam^(t-start+1) * scale (REVERSE), written to the slot of the next segment
    (forward: g+1; REVERSE: g-1), or with OWN_SLOT to slot g for every segment. With MOMENT
    (forward, with decay), also its moment, weights (end-1-t) lam^(end-1-t), into mom_ptr:
    per block mom <- lam^L (mom + L acc) + (diag((L-1-i) lam^(L-1-i)) a)^T b, its weighted
    operands (and the state's) split in two 16-bit parts with SPLIT (C.dot_t). With
    HORIZON_LOG2 > 0 (with decay) the whole blocks past the head's decay horizon, where every
    weight is below 2^-HORIZON_LOG2, are skipped (C.horizon_log2)."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    NKT = (K + BK - 1) // BK
    NVT = (V + BV - 1) // BV
    g = pid // (NKT * NVT)
    r = pid % (NKT * NVT)
    ik = r // NVT
    iv = r % NVT
    i_seq, b, j, nseg, s0, s1, n_blk = _segment(g, seq_ptr, segj_ptr, bos_ptr, eos_ptr, N, SEG,
                                                NS, BT, VARLEN)
    if VARLEN:
        if i_seq < 0:  # an unused slot of the table
            return
    if OWN_SLOT:
        slot = g
    elif REVERSE:
        if j == 0:
            return
        slot = g - 1
    else:
        if j == nseg - 1:
            return
        slot = g + 1

    offs_t = tl.arange(0, BT)
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    mk = offs_k < K
    mv = offs_v < V
    a_base = a_ptr + b.to(tl.int64) * s_ab + h.to(tl.int64) * s_ah
    b_base = b_ptr + b.to(tl.int64) * s_bb + h.to(tl.int64) * s_bh
    if HAS_DECAY:
        sl = tl.load(slope_ptr + h).to(tl.float32)
    acc = tl.full([BK, BV], 0.0, dtype=tl.float32)
    mom = tl.full([BK, BV], 0.0, dtype=tl.float32)
    ib0 = 0  # the first block in processing order that counts
    if HORIZON_LOG2 > 0:  # skipped: forward the blocks ending >= hz before s1 - 1, reversed
        # those starting >= hz after s0 - 1 (both are the first ones processed)
        hz = HORIZON_LOG2 * 1.0 / (tl.maximum(sl, 1e-30) * 1.4426950408889634)
        if REVERSE:
            lo = n_blk.to(tl.float32) - tl.ceil((hz - 1.0) / BT)
        else:
            lo = tl.floor(((s1 - s0).to(tl.float32) - hz) / BT)
        lo = tl.where(sl > 0, lo, 0.0)
        ib0 = tl.minimum(tl.maximum(lo, 0.0), n_blk.to(tl.float32)).to(tl.int32)
    for ib in range(ib0, n_blk):
        if REVERSE:
            t0 = s0 + (n_blk - 1 - ib) * BT
        else:
            t0 = s0 + ib * BT
        lb = tl.minimum(s1 - t0, BT)
        mt = offs_t < lb
        rows = (t0 + offs_t).to(tl.int64)
        a = tl.load(a_base + rows[:, None] * s_an + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        bb = tl.load(b_base + rows[:, None] * s_bn + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        if HAS_DECAY:
            if REVERSE:
                w = tl.exp(-sl * (offs_t + 1).to(tl.float32))
            else:
                w = tl.where(mt, tl.exp(-sl * tl.maximum(lb - 1 - offs_t, 0).to(tl.float32)), 0.0)
            if MOMENT:
                am = a * (w * tl.maximum(lb - 1 - offs_t, 0).to(tl.float32))[:, None]
                mom = (mom + lb.to(tl.float32) * acc) * tl.exp(-sl * lb.to(tl.float32)) + C.dot_t(
                    am, bb, SPLIT, DOT_PREC)
            acc = acc * tl.exp(-sl * lb.to(tl.float32)) + C.dot_t(a * w[:, None], bb, SPLIT, DOT_PREC)
        else:
            acc += tl.dot(tl.trans(a), bb, input_precision=DOT_PREC)
    acc = acc * scale
    st = st_ptr + (slot.to(tl.int64) * H + h) * K * V
    tl.store(st + offs_k[:, None] * V + offs_v[None, :], acc, mask=mk[:, None] & mv[None, :])
    if MOMENT:
        mp = mom_ptr + (slot.to(tl.int64) * H + h) * K * V
        tl.store(mp + offs_k[:, None] * V + offs_v[None, :], mom * scale, mask=mk[:, None] & mv[None, :])


_seg_state_kernel = kernel(_seg_state_kernel)


def _seg_scan_kernel(
    st_ptr, mom_ptr, init_ptr, slope_ptr,
    bos_ptr, eos_ptr, first_ptr, pool_slot_ptr, has_state_ptr,
    N, H, K, V, SEG, NS, NUM_SLOTS,
    HAS_INIT: tl.constexpr, HAS_DECAY: tl.constexpr, REVERSE: tl.constexpr,
    VARLEN: tl.constexpr, POOL: tl.constexpr, MOMENT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr,
):
    """Turn the local states in the slots into incoming states, one sequence per program
    row, sequentially over its segments (a fixed order: deterministic).
    With POOL (serving), the initial state is the sequence's pool row (init_ptr) where
    has_state says so, and segment 0's incoming state goes to its slot too: the output
    kernel then reads every incoming state from the slots and never the pool row that it
    overwrites with the final state (another program's segment may still be reading it).
    With MOMENT (forward, with decay), the moments in mom_ptr's slots become the incoming
    states' moments (their derivatives by log lam) beside them: the initial state's is 0
    (lam^0 S0) and, over a previous segment of L tokens, Mo <- lam^L (Mo + L S) + its own."""
    i = tl.program_id(0)
    h = tl.program_id(1)
    r = tl.program_id(2)
    NVT = (V + BV - 1) // BV
    ik = r // NVT
    iv = r % NVT
    if VARLEN:
        bos = tl.load(bos_ptr + i)
        eos = tl.load(eos_ptr + i)
        g0 = tl.load(first_ptr + i)
    else:
        bos = 0
        eos = N
        g0 = i * NS
    L = eos - bos
    nseg = tl.maximum((L + SEG - 1) // SEG, 1)
    offs_k = ik * BK + tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    m = (offs_k[:, None] < K) & (offs_v[None, :] < V)
    offs = offs_k[:, None] * V + offs_v[None, :]
    if HAS_DECAY:
        sl = tl.load(slope_ptr + h).to(tl.float32)
    S = tl.full([BK, BV], 0.0, dtype=tl.float32)
    Mo = tl.full([BK, BV], 0.0, dtype=tl.float32)
    if POOL:
        if HAS_INIT:
            row = tl.load(pool_slot_ptr + i)
            read = (row >= 0) & (row < NUM_SLOTS) & (tl.load(has_state_ptr + i) != 0)
            row = tl.where(read, row, 0).to(tl.int64)
            S = tl.load(init_ptr + (row * H + h) * K * V + offs, mask=m & read, other=0.0)
        tl.store(st_ptr + (g0.to(tl.int64) * H + h) * K * V + offs, S, mask=m)
    else:
        if HAS_INIT:
            S = tl.load(init_ptr + (i.to(tl.int64) * H + h) * K * V + offs, mask=m, other=0.0).to(tl.float32)
    for jj in range(1, nseg):
        if REVERSE:
            j = nseg - 1 - jj
            seglen = tl.minimum(L - (j + 1) * SEG, SEG)
        else:
            j = jj
            seglen = SEG
        p = st_ptr + ((g0 + j).to(tl.int64) * H + h) * K * V + offs
        loc = tl.load(p, mask=m, other=0.0).to(tl.float32)
        if MOMENT:
            pm = mom_ptr + ((g0 + j).to(tl.int64) * H + h) * K * V + offs
            Mo = (Mo + seglen.to(tl.float32) * S) * tl.exp(-sl * seglen.to(tl.float32)) + tl.load(
                pm, mask=m, other=0.0)
            tl.store(pm, Mo, mask=m)
        if HAS_DECAY:
            S = S * tl.exp(-sl * seglen.to(tl.float32)) + loc
        else:
            S = S + loc
        tl.store(p, S, mask=m)


_seg_scan_kernel = kernel(_seg_scan_kernel)


def _seg_out_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, slope_ptr, init_ptr, st_ptr, final_ptr, x_ptr, terms_ptr,
    mom_ptr, dfin_ptr, seq_ptr, segj_ptr, bos_ptr, eos_ptr, pool_slot_ptr,
    N, H, K, V, SEG, NS, NUM_SLOTS,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    s_xb, s_xh, s_xn, s_tp,
    s_sr, s_sc,
    scale,
    HAS_INIT: tl.constexpr, HAS_DECAY: tl.constexpr, STORE_FINAL: tl.constexpr,
    TERMS: tl.constexpr, HAS_DFINAL: tl.constexpr, VARLEN: tl.constexpr, POOL: tl.constexpr,
    SPLIT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
    INTERP: tl.constexpr,
):
    """Outputs of one segment, V tile iv. States (initial, slots) are K x V matrices of
    H * K * V floats per (sequence or slot), element (r, c) at r * s_sr + c * s_sc, so the
    backward can read them transposed; the final state is written K x V row-major.
    With TERMS (the dq use: q, k, v = do, v, k; x = q; with decay), the state part of the
    d slope terms (docs/DSLOPE.md), V tile iv's share, into terms[iv] (NVT, B, H, N): beside
    the state S it carries its moment Mo = dS/d log lam (the scan's, mom_ptr, 0 for the
    initial state); row i of a block gets c (i+1) lam^(i+1) x_i . (q_i S) from dq's
    inter-block part, its first row also c <Mo, sum_i lam^(i+1) q_i^T x_i>, and the last
    token of the sequence <dfinal, Mo> at the end (HAS_DFINAL). With SPLIT (TERMS, 16-bit),
    the operands that carry float32 values go in as hi + lo parts: S in the inter-block
    product (then q S with the decay applied to the product's rows) and the weighted rows of
    sum_i lam^(i+1) q_i^T x_i and of the moment's and the state's updates (C.dot_t).
    With POOL (serving), every incoming state is in the slots (the scan's) and the final
    state goes to the sequence's pool row (final_ptr) when its slot is in range."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    NVT = (V + BV - 1) // BV
    g = pid // NVT
    iv = pid % NVT
    i_seq, b, j, nseg, s0, s1, n_blk = _segment(g, seq_ptr, segj_ptr, bos_ptr, eos_ptr, N, SEG,
                                                NS, BT, VARLEN)
    if VARLEN:
        if i_seq < 0:  # an unused slot of the table
            return

    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    mk = offs_k < K
    mv = offs_v < V
    ms = mk[:, None] & mv[None, :]
    s_offs = offs_k[:, None] * s_sr + offs_v[None, :] * s_sc
    # incoming state of this segment
    S = tl.full([BK, BV], 0.0, dtype=tl.float32)
    if POOL:
        S = tl.load(st_ptr + (g.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0)
    else:
        if j > 0:
            S = tl.load(st_ptr + (g.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0).to(tl.float32)
        else:
            if HAS_INIT:
                S = tl.load(init_ptr + (i_seq.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0).to(tl.float32)
    if TERMS:
        Mo = tl.full([BK, BV], 0.0, dtype=tl.float32)
        if j > 0:
            Mo = tl.load(mom_ptr + (g.to(tl.int64) * H + h) * K * V + s_offs, mask=ms, other=0.0).to(tl.float32)

    bh = b.to(tl.int64)
    hh = h.to(tl.int64)
    q_base = q_ptr + bh * s_qb + hh * s_qh
    k_base = k_ptr + bh * s_kb + hh * s_kh
    v_base = v_ptr + bh * s_vb + hh * s_vh
    o_base = o_ptr + bh * s_ob + hh * s_oh
    if TERMS:
        x_base = x_ptr + bh * s_xb + hh * s_xh
        t_base = terms_ptr + iv.to(tl.int64) * s_tp + (bh * H + hh) * N
    diff = offs_t[:, None] - offs_t[None, :]
    if HAS_DECAY:
        sl = tl.load(slope_ptr + h).to(tl.float32)
        M = tl.where(diff >= 0, tl.exp(-sl * tl.maximum(diff, 0).to(tl.float32)), 0.0)
        qdec = tl.exp(-sl * (offs_t + 1).to(tl.float32))
    else:
        M = tl.where(diff >= 0, 1.0, 0.0)
    for ib in range(0, n_blk):
        t0 = s0 + ib * BT
        lb = tl.minimum(s1 - t0, BT)
        mt = offs_t < lb
        rows = (t0 + offs_t).to(tl.int64)
        q = tl.load(q_base + rows[:, None] * s_qn + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        k = tl.load(k_base + rows[:, None] * s_kn + offs_k[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        v = tl.load(v_base + rows[:, None] * s_vn + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        A = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * M
        o = tl.dot(A.to(v.dtype), v, input_precision=DOT_PREC)
        if HAS_DECAY:
            qd = q * qdec[:, None]
            if SPLIT:  # q as loaded, the decay on the product's rows, and S as hi + lo
                Sh = S.to(q.dtype)
                inter = (tl.dot(q, Sh, input_precision=DOT_PREC) + tl.dot(
                    q, (S - Sh.to(tl.float32)).to(q.dtype), input_precision=DOT_PREC)) * qdec[:, None]
            else:
                inter = tl.dot(qd.to(q.dtype), S.to(q.dtype), input_precision=DOT_PREC)
            o += inter
            kw = tl.where(mt, tl.exp(-sl * tl.maximum(lb - 1 - offs_t, 0).to(tl.float32)), 0.0)
            if TERMS:  # from the state's part of o alone
                x = tl.load(x_base + rows[:, None] * s_xn + offs_v[None, :], mask=mt[:, None] & mv[None, :],
                            other=0.0)
                tau = C.row_sums(x.to(tl.float32) * (offs_t + 1).to(tl.float32)[:, None] * inter,
                                 INTERP) * scale
                # the moment's part of the whole block on its first token, as
                # <Mo, sum_i lam^(i+1) q_i^T x_i>: Mo is never rounded to 16 bits
                G = C.dot_t(qd, x, SPLIT, DOT_PREC)
                tau = tl.where((offs_t == 0)[:, None], tau + C.total(Mo * G, BT, INTERP) * scale, tau)
                km = k * (kw * tl.maximum(lb - 1 - offs_t, 0).to(tl.float32))[:, None]
                Mo = (Mo + lb.to(tl.float32) * S) * tl.exp(-sl * lb.to(tl.float32)) + C.dot_t(
                    km, v, SPLIT, DOT_PREC)
                if HAS_DFINAL:
                    if (j == nseg - 1) & (ib == n_blk - 1):  # Mo is the final state's moment
                        df = tl.load(dfin_ptr + (i_seq.to(tl.int64) * H + h) * K * V + s_offs,
                                     mask=ms, other=0.0)
                        tau = tl.where((offs_t == lb - 1)[:, None], tau + C.total(df * Mo, BT, INTERP),
                                       tau)
                C.store_rows(t_base + rows, tau, mt, INTERP)
            S = S * tl.exp(-sl * lb.to(tl.float32)) + C.dot_t(k * kw[:, None], v, SPLIT, DOT_PREC)
        else:
            o += tl.dot(q, S.to(q.dtype), input_precision=DOT_PREC)
            S += tl.dot(tl.trans(k), v, input_precision=DOT_PREC)
        o = o * scale
        tl.store(o_base + rows[:, None] * s_on + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mt[:, None] & mv[None, :])
    if STORE_FINAL:
        if j == nseg - 1:
            row = i_seq
            live = i_seq >= 0
            if POOL:
                row = tl.load(pool_slot_ptr + i_seq)
                live = (row >= 0) & (row < NUM_SLOTS)
                row = tl.where(live, row, 0)
            f = final_ptr + (row.to(tl.int64) * H + h) * K * V
            tl.store(f + offs_k[:, None] * V + offs_v[None, :], S, mask=ms & live)


_seg_out_kernel = kernel(_seg_out_kernel)


# ----------------------------------------------------------------------------- launchers

def _bv(K, V):
    """V tile width of the output/bwd kernels: the whole K in registers, K x BV <= 128 x 128."""
    BK = C.next_pow2(K)
    cap = 128 if BK <= 128 else 64
    return BK, min(C.next_pow2(V), cap)


def _segment_states(a, b, slope, scale, table, H, K, V, reverse, own_slot, dot_prec,
                    moment=False):
    """Pass 1: every segment's local state, (G, H, K, V) fp32, in the slots _seg_state_kernel
    describes (slots it does not write are left uninitialised); with `moment` (forward, with
    decay), (states, their moments)."""
    dev = a.device
    st = torch.empty(table.G, H, K, V, dtype=torch.float32, device=dev)
    mom = torch.empty_like(st) if moment else None
    BK = min(C.next_pow2(K), 128)
    BV = min(C.next_pow2(V), 128)
    NKT, NVT = triton.cdiv(K, BK), triton.cdiv(V, BV)
    seq_of, j_of, bos, eos = table.args(dev)
    _seg_state_kernel[(table.G * NKT * NVT, H)](
        a, b, slope if slope is not None else st, st, mom if moment else st,
        seq_of, j_of, bos, eos, table.N, H, K, V, table.seg, table.NS,
        a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1), b.stride(2),
        float(scale),
        HAS_DECAY=slope is not None, REVERSE=reverse, VARLEN=table.varlen, OWN_SLOT=own_slot,
        MOMENT=moment, SPLIT=moment and a.dtype != torch.float32,
        HORIZON_LOG2=C.horizon_log2(moment) if slope is not None else 0,
        BT=C.block_tokens("state", a.dtype),
        BK=BK, BV=BV, DOT_PREC=dot_prec,
        num_warps=C.CONFIG["state_warps"], num_stages=C.CONFIG["state_stages"])
    return (st, mom) if moment else st


class Pool(NamedTuple):
    """States in a pool (serving): rows (num_slots, H, K, V) fp32, addressed per sequence by
    slots (int32) and, where has_state (uint8 or None) is nonzero, read as its start."""
    rows: torch.Tensor
    slots: torch.Tensor
    has_state: Optional[torch.Tensor]


def seg_states(a, b, slope, scale, init, table, H, K, V, reverse, dot_prec, pool=None,
               moment=False):
    """Incoming states (forward) or carries (reverse) of every segment: (G, H, K, V) fp32.
    Slot g holds segment g's incoming state (forward, j >= 1; j = 0 too with a `pool`, whose
    rows are then the initial states) or carry from the right (reverse, j < n-1); other
    slots are unused. With `moment` (forward, with decay, no pool): (states, their moments
    d/d log lam), for the d slope terms."""
    assert not moment or (slope is not None and not reverse and pool is None)
    st = _segment_states(a, b, slope, scale, table, H, K, V, reverse, False, dot_prec, moment)
    st, mom = st if moment else (st, None)
    BKs = min(C.next_pow2(K), 64)
    BVs = min(C.next_pow2(V), 64)
    seq_of, j_of, bos, eos = table.args(a.device)
    first = table.first if table.varlen else bos
    if pool is not None:
        init = pool.rows if pool.has_state is not None else None
    _seg_scan_kernel[(table.nseqs, H, triton.cdiv(K, BKs) * triton.cdiv(V, BVs))](
        st, mom if moment else st, init if init is not None else st,
        slope if slope is not None else st, bos, eos, first,
        pool.slots if pool is not None else bos,
        pool.has_state if pool is not None and pool.has_state is not None else bos,
        table.N, H, K, V, table.seg, table.NS, pool.rows.shape[0] if pool is not None else 0,
        HAS_INIT=init is not None, HAS_DECAY=slope is not None, REVERSE=reverse,
        VARLEN=table.varlen, POOL=pool is not None, MOMENT=moment, BK=BKs, BV=BVs, num_warps=4)
    return (st, mom) if moment else st


def seg_out(q, k, v, o, slope, scale, init, states, final, table, H, K, V, transposed, dot_prec,
            terms_x=None, moments=None, dfinal=None, pool=None):
    """Pass 2 into `o`. K is q/k's last dim, V is v/o's; `init`/`states` hold K x V states,
    or V x K ones read transposed when `transposed` (the dq use). With `terms_x` (the dq use:
    q; with decay), also returns the state part of the d slope terms, float32 (B, H, N)
    (_seg_out_kernel), from the incoming states' `moments` (seg_states, None for a single
    segment) and `dfinal` (None: no loss on the final state), read like the states. With a
    `pool`, `states` (seg_states with the pool) hold every incoming state and the final
    states go to the pool's rows."""
    dev = q.device
    BK, BV = _bv(K, V)
    NVT = triton.cdiv(V, BV)
    dummy = o
    s_sr, s_sc = (1, K) if transposed else (V, 1)
    seq_of, j_of, bos, eos = table.args(dev)
    B, _, N, _ = o.shape
    terms = None
    x = dummy
    if terms_x is not None:
        assert slope is not None
        x = terms_x
        terms = torch.empty(NVT, B, H, N, dtype=torch.float32, device=dev)
    _seg_out_kernel[(table.G * NVT, H)](
        q, k, v, o, slope if slope is not None else dummy,
        init if init is not None else dummy, states if states is not None else dummy,
        final if final is not None else dummy, x, terms if terms is not None else dummy,
        moments if moments is not None else dummy, dfinal if dfinal is not None else dummy,
        seq_of, j_of, bos, eos, pool.slots if pool is not None else bos,
        table.N, H, K, V, table.seg, table.NS, pool.rows.shape[0] if pool is not None else 0,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        x.stride(0), x.stride(1), x.stride(2), B * H * N,
        s_sr, s_sc, float(scale),
        HAS_INIT=init is not None, HAS_DECAY=slope is not None, STORE_FINAL=final is not None,
        TERMS=terms is not None, HAS_DFINAL=dfinal is not None, VARLEN=table.varlen,
        POOL=pool is not None, SPLIT=terms is not None and q.dtype != torch.float32,
        BT=C.block_tokens("out", q.dtype), BK=BK, BV=BV,
        DOT_PREC=dot_prec,
        INTERP=C.interpret(),
        num_warps=C.CONFIG["out_warps"], num_stages=C.CONFIG["out_stages"])
    if terms is None:
        return None
    return terms[0] if NVT == 1 else terms.sum(0)


def make_table(q, cu_seqlens, n_streams_extra=1):
    B, H, N, _ = q.shape
    if cu_seqlens is None:
        seg = C.plan_segment(N, B * H * n_streams_extra, q.device, C.CONFIG["seg"])
    else:
        nseqs = cu_seqlens.numel() - 1
        # the longest sequence is unknown without a sync: plan as if equal lengths
        seg = C.plan_segment(-(-N // max(nseqs, 1)), max(nseqs, 1) * H * n_streams_extra,
                             q.device, C.CONFIG["seg"])
    return C.SegTable(N, B, seg, cu_seqlens)


def fwd(q, k, v, slope, scale, initial_state, cu_seqlens, output_final_state):
    """Keeps the segments' incoming states (seg_states) for the backward's dq pass."""
    B, H, N, K = q.shape
    V = v.shape[-1]
    o = empty_like_layout(q, V)
    final = no_state(q)
    if output_final_state:
        final = torch.empty(num_states(q, cu_seqlens), H, K, V, dtype=torch.float32, device=q.device)
    _, BV = _bv(K, V)
    table = make_table(q, cu_seqlens, triton.cdiv(V, BV))
    prec = C.dot_prec(q.dtype)
    states = None
    if not table.single:
        states = seg_states(k, v, slope, 1.0, initial_state, table, H, K, V, False, prec)
    seg_out(q, k, v, o, slope, scale, initial_state, states,
            final if output_final_state else None, table, H, K, V, False, prec)
    return o, final, (states if states is not None else nothing_kept(q, v))


def pool_prefill(q, k, v, slope, scale, cu_seqlens, state_pool, slots, has_state):
    """The forward of packed sequences from and into pool rows (kernel interface): pass 1
    and the scan always run, so that the output pass reads no pool row (see _seg_scan_kernel)."""
    _, H, _, K = q.shape
    V = v.shape[-1]
    o = empty_like_layout(q, V)
    _, BV = _bv(K, V)
    table = make_table(q, cu_seqlens, triton.cdiv(V, BV))
    prec = C.dot_prec(q.dtype)
    pool = Pool(state_pool, slots, None if has_state is None else has_state.view(torch.uint8))
    states = seg_states(k, v, slope, 1.0, None, table, H, K, V, False, prec, pool)
    seg_out(q, k, v, o, slope, scale, None, states, state_pool, table, H, K, V, False, prec,
            pool=pool)
    return o


def state(a, b, slope, scale, to_end):
    """The state-only pass of the kernel interface (kernels/__init__.py): Σ_t w_t a_tᵀ b_t per (batch,
    head), float32 (B, H, K, V), with w_t = λ^{N-1-t} (to_end) or scale·λ^{t+1}. Pass 1 of
    the forward on every segment, then the segments' sums decayed to the sequence's end
    (start): a and b are read once."""
    B, H, N, K = a.shape
    V = b.shape[-1]
    table = make_table(a, None)
    part = _segment_states(a, b, slope, 1.0 if to_end else scale, table, H, K, V,
                           not to_end, True, C.dot_prec(a.dtype))
    part = part.view(B, table.NS, H, K, V)
    if slope is None:
        return part.sum(1)
    starts = torch.arange(table.NS, device=a.device, dtype=torch.float64) * table.seg
    gaps = N - torch.clamp(starts + table.seg, max=N) if to_end else starts  # ≥ 0
    w = torch.exp(-gaps[:, None] * slope.double()[None, :]).float()          # (NS, H)
    return torch.einsum("bjhkv,jh->bhkv", part, w)
