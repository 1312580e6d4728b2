"""One decode step: S <- lam S + k^T v (in place), o = c q S. One program per (b, h, V tile):
it alone reads and writes its (D x BV) part of the state, so the in-place update has no
race, and nothing is read back to the host (capturable in a CUDA graph). The state of row
b is state[b], or with a pool (serving) state[slots[b]], read on the device; a slot out of
[0, num_slots) is a padding row: no state read or written, output 0."""
import torch
import triton
import triton.language as tl

from . import _common as C
from ._common import kernel


def _decode_kernel(
    q_ptr, k_ptr, v_ptr, st_ptr, o_ptr, slope_ptr, slot_ptr,
    H, K, V, NUM_SLOTS,
    s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_sb, s_sh, s_sk, s_ob, s_oh,
    scale,
    HAS_DECAY: tl.constexpr, POOL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    INTERP: tl.constexpr,
):
    bh = tl.program_id(0)
    iv = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_k = tl.arange(0, BK)
    offs_v = iv * BV + tl.arange(0, BV)
    mk = offs_k < K
    mv = offs_v < V
    row = b
    live = b >= 0
    if POOL:
        row = tl.load(slot_ptr + b).to(tl.int64)
        live = (row >= 0) & (row < NUM_SLOTS)
        row = tl.where(live, row, 0)
    q = tl.load(q_ptr + b * s_qb + h * s_qh + offs_k, mask=mk, other=0.0).to(tl.float32)
    # a padding row loads k = 0 and a zero state: its output is 0
    k = tl.load(k_ptr + b * s_kb + h * s_kh + offs_k, mask=mk & live, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * s_vb + h * s_vh + offs_v, mask=mv, other=0.0).to(tl.float32)
    p = st_ptr + row * s_sb + h * s_sh + offs_k[:, None] * s_sk + offs_v[None, :]
    m = mk[:, None] & mv[None, :] & live
    S = tl.load(p, mask=m, other=0.0)
    if HAS_DECAY:
        S = S * tl.exp(-tl.load(slope_ptr + h).to(tl.float32))
    S += k[:, None] * v[None, :]
    tl.store(p, S, mask=m)
    if INTERP:
        # o = q S as a (16, BK) x (BK, BV) product of 16 copies of q, row 0 kept: library
        # reductions (tl.sum) do not run in an interpreter started after triton's import
        rows = tl.arange(0, 16)
        q16 = tl.where(rows[:, None] >= 0, q[None, :], 0.0)
        o = tl.dot(q16, S, input_precision="ieee") * scale
        po = o_ptr + b * s_ob + h * s_oh + rows[:, None] * 0 + offs_v[None, :]
        tl.store(po, o.to(o_ptr.dtype.element_ty), mask=(rows[:, None] == 0) & mv[None, :])
    else:
        o = tl.sum(q[:, None] * S, axis=0) * scale
        tl.store(o_ptr + b * s_ob + h * s_oh + offs_v, o.to(o_ptr.dtype.element_ty), mask=mv)


_decode_kernel = kernel(_decode_kernel)


def decode(q, k, v, state, slope, scale, slots=None):
    """The decode step of the kernel interface; with `slots` (int32 (B,)), `state` is a pool
    (num_slots, H, K, V) and row b's state is state[slots[b]]."""
    B, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty(B, H, V, dtype=q.dtype, device=q.device)
    BK = C.next_pow2(K)
    # (BK x BV) fp32 tiles of <= 4K elements: 16 per thread at 4 warps, many programs
    BV = min(C.next_pow2(V), max(16, 4096 // BK))
    _decode_kernel[(B * H, triton.cdiv(V, BV))](
        q, k, v, state, o, slope if slope is not None else state,
        slots if slots is not None else state, H, K, V, state.shape[0],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        state.stride(0), state.stride(1), state.stride(2), o.stride(0), o.stride(1),
        float(scale),
        HAS_DECAY=slope is not None, POOL=slots is not None, BK=BK, BV=BV, INTERP=C.interpret(), num_warps=4)
    return o


def pool_decode(q, k, v, state_pool, slots, slope, scale):
    return decode(q, k, v, state_pool, slope, scale, slots)
