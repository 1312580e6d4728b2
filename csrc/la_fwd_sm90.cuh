// Forward kernel of Lightning Attention-2 for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation. One CTA per (sequence, head, segment): pass 2 of the segment plan (outputs
// and final state from the segment's incoming state); pass 1 (each segment's local state from
// zero, K and V only) is its own kernel, la_state_sm90.cuh.
//
// kReverse runs the same product in reversed time: the dk/dv sweep of the backward, one pass
// per gradient. With (Q, K, V) -> (K, Q, dO) it gives dV, with (V, dO, Q) dK, the state being
// H = λ·(gradient of the state after the block) (Hᵀ for dK); blocks from the last to the first:
//   O = diag(λ^{n-1-i}) X H + (scale · (X Yᵀ) ⊙ Mᵀ) Z,   Mᵀ_ij = λ^{j-i} (j >= i)
//   H = λ^n H + scale · (diag(λ^{j+1}) Y)ᵀ Z
// (X, Y, Z in the Q, K, V slots). Its incoming state is the final state's gradient (last
// segment) and its outgoing one, after the first block, the initial state's.
//
// Warpgroups: WG 0 is the producer (one thread issues the TMA loads of the (64, HD) tiles of
// Q, K and V into a kStages-deep ring; 24 registers); WG 1.. are consumers, WG 1 + w owning the
// 64 columns [64w, 64w + 64) of E: its slice of the state S (HD × 64, fp32 accumulators) and
// of every output row. Per 64-token block of n tokens, each consumer warpgroup computes
//   P   = (Q Kᵀ) ⊙ M                     SS wgmma (64 × 64), masked and decayed in registers
//   O   = λ^{i+1} · Q S_w + P V_w         SS wgmma from a 16-bit copy of S_w, then RS with P
//   S_w = λ^n S_w + (diag(λ^{n-1-j}) K)ᵀ V_w   RS wgmma, Kᵀ fragments by ldmatrix.trans
//       (kWeightV, the forward-time order: as Kᵀ (diag(λ^{n-1-j}) V_w), the weights on V_w)
// The warpgroups never wait for each other (but with kShareP, where they share P once per
// block): each keeps its own copy of its state slice (double-buffered; kShareP: single) and
// releases a stage of the ring when it is done with it.
// The per-block building blocks are la_block_sm90.cuh's, the d slope terms' la_terms_sm90.cuh's.
#pragma once

#include <stdexcept>

#include "la_terms_sm90.cuh"

namespace la {

// kReverse: the dk/dv sweep; kTerms: the dq sweep with d slope terms.
template <typename T, int HD, bool kReverse = false, bool kTerms = false>
struct Sm90FwdTraits {
  static_assert(HD == 64 || HD == 128, "specialised head dims");
  static_assert(!(kReverse && kTerms), "the terms are the forward dq sweep's");
  // the forward-time order without terms: the state update issued early
  static constexpr bool kEarly = !kReverse && !kTerms;
  static constexpr int kBlock = 64;
  static constexpr int kConsumers = HD / 64;               // consumer warpgroups
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // with the early order and two consumers, P once per block, shared (see la_fwd_sm90_kernel)
  static constexpr bool kShareP = kEarly && kConsumers == 2;
  // with the early order, the state update's key weights on V rather than on Kᵀ (see
  // la_fwd_sm90_kernel)
  static constexpr bool kWeightV = kEarly;
  static constexpr int kMinBlocksPerSM = HD == 64 ? 2 : 1;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = HD == 64 ? 232 : 240;
  // with the terms' fourth tile: two stages (D = 128: shared memory; D = 64: two CTAs per SM)
  static constexpr int kStages = kTerms ? 2 : 3;
  static constexpr int kBoxBytes = 64 * 64 * 2;            // (64 rows, 64 columns), 16-bit
  static constexpr int kBoxes = HD / 64;                   // boxes per (64, HD) tile
  static constexpr int kTileBytes = kBoxes * kBoxBytes;
  static constexpr int kTiles = kTerms ? 4 : 3;            // Q, K, V (and the real q)
  static constexpr int kStageBytes = kTiles * kTileBytes;
  static constexpr int kStateCopyBytes = HD * 64 * 2;      // (HD, 64) 16-bit, MN-major
  // copies of each consumer's state slice (kShareP: one, read by Q·S before the next is
  // written)
  static constexpr int kStateCopies = kShareP ? 1 : 2;
  static constexpr int kPBoxes = kShareP ? 2 : 0;          // the published P, by block parity
  static constexpr int kWBoxes = kWeightV ? kConsumers : 0;  // each consumer's weighted V_w
  static constexpr int kBarrierBytes = sm90::Ring<kStages>::kBarrierBytes;
  // kTerms, per block parity: each consumer's 64 row partials, then its warps' shares of the
  // block's first-token and last-token terms (4 + 4)
  static constexpr int kRedFloats = kConsumers * (64 + 8);
  static constexpr int kRedBytes = kTerms ? 2 * kRedFloats * 4 : 0;
  // 1 KiB of slack: the swizzled boxes need 1 KiB alignment, the dynamic base has less
  static constexpr int kSmem = kStages * kStageBytes +
                               kConsumers * (kStateCopies * kStateCopyBytes + kBoxBytes) +
                               (kPBoxes + kWBoxes) * kBoxBytes + kBarrierBytes + kRedBytes + 1024;
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert(kMinBlocksPerSM == 1 || 2 * (kSmem + 1024) <= 228 * 1024, "two CTAs per SM");
};

// kTerms (forward only): pass 2 of the dq sweep with the d slope terms, on (do, v, k) with the
// real q (tm_r, p.rq) as a fourth tile, exactly the terms of la_fwd_kernel<..., kSlope> (its
// header and docs/DSLOPE.md): the moment M beside S (fp32, this consumer's slice, the same
// recurrence M <- λ^n (M + n S) + (diag((n-j) λ^{n-1-j}) K)ᵀ V_w, M = S at a sequence's start
// and from ws_m after the first segment), and per token τ written to p.terms: the block's pairs
// from P and rq Kᵀ (fp32; each consumer half of the keys), r · rq·(the inter-block output),
// the block's moment term c <M, G> on its first token and <dS_f, M − S> on the sequence's
// last. The weighted operands of M, S and G go in as two 16-bit parts. The state and the
// moment slices hold HD registers per thread (D = 128: 128 of 240), so a block runs its products
// one group at a time, each waited for before the next one's operands are built: P and rq Kᵀ
// (issued at the block's start, not under the previous epilogue), Q S, P V (the outputs are
// staged right after it), then G, M and S one 64-row box of D at a time. The consumers meet
// once per block to add up the terms. tm_r is unused without kTerms.
// kResidual (kTerms; the default, LIGHTNING_ATTENTION_DSLOPE_RESIDUAL=0 turns it off): Q S from S's
// 16-bit copy S̃ and, in the same group of products, from S − S̃ in 16 bits beside it (the
// second state copy, which without kResidual alternates by block parity), so that the
// r · rq·(the inter-block output) term, which a weakly decaying head's block terms cancel by
// orders of magnitude, reads S to about 2^-16 rather than 2^-9. One copy of S̃ is enough here:
// a block's Q S is waited for, and the consumers meet, before the copy is rewritten.
// kEarly (the forward-time pass 2 without terms; measured on W: the forward 5% faster at
// D = 128, then 8% more with kShareP; at D = 64, H = 64 1% at N <= 16K, 11% at 64K): the
// block's state update is issued right behind its Q·S (Q·S reads the shared copy of S_w, the
// update its registers), so that P·V goes in behind the running update instead of after Q·S
// has drained, the update's operands are built under Q·S, and the next block's state copy is
// written under P·V and P(c + 1) rather than after both; its Q·S and P products take their
// descriptors by addition (desc_add), a third of the instructions between two of their
// wgmmas.
// kShareP (kEarly with two consumers, D = 128) computes P(c) once per block instead of by
// each consumer: consumer c % 2 masks it under Q·S(c) and publishes it as a 16-bit (64, 64)
// box (one of two, by block parity); the consumers meet once per block after Q·S(c) (a
// barrier of both), and both read P as the A operand of P·V from the box. The meeting also
// ends Q·S(c)'s reads of each state copy, so one copy per consumer is enough (the 16 KiB each
// that the boxes need).
// kWeightV (= kEarly) moves the state update's key weights from Kᵀ to V:
// (diag(w) K)ᵀ V_w = Kᵀ (diag(w) V_w). Each consumer writes diag(w) V_w, its own 64 columns,
// into a box of its own, and takes Kᵀ as ldmatrix.trans gives it (the keys from n on masked to
// zero): the weighting of all D rows of Kᵀ in registers, which every consumer did for itself,
// becomes one of 64 × 64 elements per consumer (measured: the forward 5% faster at D = 128;
// at D = 64, one consumer and as many weights either way, 1,363 -> 1,219 instructions a
// loop and about 1% at 64K).
template <typename T, int HD, bool kReverse, bool kTerms, bool kResidual>
__global__ void __launch_bounds__(Sm90FwdTraits<T, HD, kReverse, kTerms>::kThreads,
                                  Sm90FwdTraits<T, HD, kReverse, kTerms>::kMinBlocksPerSM)
    la_fwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q,
                       const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_o,
                       const __grid_constant__ CUtensorMap tm_r, const FwdParams p) {
#ifdef LA_SM90_ENABLED
  static_assert(kTerms || !kResidual, "the residual is a d slope term's");
  using namespace sm90;
  using Tr = Sm90FwdTraits<T, HD, kReverse, kTerms>;
  constexpr bool kEarly = Tr::kEarly, kShareP = Tr::kShareP, kWeightV = Tr::kWeightV;
  constexpr int kStages = Tr::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const int g = blockIdx.x, h = blockIdx.y;
  const SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  // segments in processing order: the first takes the incoming state, the last gives the
  // outgoing one
  const bool first_seg = kReverse ? si.seg == si.nseg - 1 : si.seg == 0;
  const bool last_seg = kReverse ? si.seg == 0 : si.seg == si.nseg - 1;

  // smem: [stage][Q K V (rq)][box] | [consumer][kStateCopies] state copies | [consumer] output
  // box | (kShareP) [2 block parities] P | (kWeightV) [consumer] diag(w) V_w | full[], empty[]
  // barriers | (kTerms) [2 block parities] the terms' shares
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t states = base + kStages * Tr::kStageBytes;
  const uint32_t staging = states + Tr::kConsumers * Tr::kStateCopies * Tr::kStateCopyBytes;
  const uint32_t pboxes = staging + Tr::kConsumers * Tr::kBoxBytes;
  const uint32_t wboxes = pboxes + Tr::kPBoxes * Tr::kBoxBytes;
  const uint32_t bars = wboxes + Tr::kWBoxes * Tr::kBoxBytes;
  const Ring<kStages> ring{bars};
  float* red = reinterpret_cast<float*>(smem_raw + (bars + Tr::kBarrierBytes - smem_u32(smem_raw)));
  auto tile = [&](int s, int which) { return base + s * Tr::kStageBytes + which * Tr::kTileBytes; };

  const int tid = threadIdx.x;
  ring.init(Tr::kConsumers);

  const int nblk = (si.len + 63) / 64;
  const SegRows rows = seg_rows(p.seg, si, h);
  const int wg = tid / 128;

  if (wg == 0) {  // ------------------------------------------------------------ producer
    regs_dealloc<Tr::kProducerRegs>();
    if (tid == 0) {
      if constexpr (kTerms) {
        const CUtensorMap* const maps[] = {&tm_q, &tm_k, &tm_v, &tm_r};
        ring.template produce<Tr::kBoxes>(maps, nblk, kReverse, (int)rows.tok0, h,
                                          (int)rows.batch, tile);
      } else {
        const CUtensorMap* const maps[] = {&tm_q, &tm_k, &tm_v};
        ring.template produce<Tr::kBoxes>(maps, nblk, kReverse, (int)rows.tok0, h,
                                          (int)rows.batch, tile);
      }
    }
    return;
  }

  // -------------------------------------------------------------------------- consumers
  regs_alloc<Tr::kConsumerRegs>();
  const int w = wg - 1;                       // E columns [64w, 64w + 64)
  const int t = tid - 128 * wg;               // thread in the warpgroup
  const int warp = t >> 5, lane = t & 31;
  const int gq = lane >> 2, tq = lane & 3;
  const int bar_id = 1 + w;                   // this warpgroup's named barrier
  // kShareP: w as a value the compiler knows to be the same in the warp (a shuffle from
  // lane 0), for the branches around one consumer's wgmmas: ptxas serialises every wgmma of the
  // kernel when one is issued on a path it takes as divergent (C7520)
  const int w_uniform = kShareP ? __shfl_sync(0xffffffffu, w, 0) : w;
  const uint32_t copy0 = states + w * Tr::kStateCopies * Tr::kStateCopyBytes;
  // the copy of the state entering block c (kResidual: always the first, S − S̃ in the second)
  auto copy_at = [&](int c) {
    return copy0 + (kResidual ? 0 : (c & (Tr::kStateCopies - 1)) * Tr::kStateCopyBytes);
  };
  const uint32_t residual_copy = copy0 + Tr::kStateCopyBytes;  // kResidual
  const uint32_t out_box = staging + w * Tr::kBoxBytes;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of a block
  // the block's decay factors, once per CTA; kTerms: in each block where they are used (from
  // an opaque zero, so that the compiler cannot hoist them), as the state and the moment leave
  // no room for them
  BlockDecay<kReverse> dec;
  if (!kTerms) dec.init(nl2, p.scale, r0, tq);

  // incoming state of the segment: the scan's state (segments after the first, and the first
  // too with slots: the scan copied the pool row, which this sequence's last segment
  // overwrites; in the dq sweep maybe the forward's, transposed), the initial state, or 0
  // (kTerms: the moment M from ws_m beside it, else M = S)
  float s_acc[Tr::kBoxes][32], m_acc[Tr::kBoxes][32];
  {
    const float* src = nullptr;
    int64_t sd = HD, se = 1;
    const int64_t ws_at = ((int64_t)g * p.seg.H + h) * HD * HD;
    const bool from_ws = !first_seg || (si.nseg > 1 && p.state_rows.slots != nullptr);
    if (from_ws) {
      src = p.ws + ws_at;
      if (p.ws_transposed) {
        sd = 1;
        se = HD;
      }
    } else if (p.state_in != nullptr) {
      const int64_t row = state_in_row(p.state_rows, si.seq);
      src = row >= 0 ? p.state_in + (row * p.seg.H + h) * HD * HD : nullptr;
      sd = p.state_in_sd;
      se = p.state_in_se;
    }
    load_state_slice<Tr::kBoxes>(s_acc, src, sd, se, w, warp, lane);
    if constexpr (kTerms) {
      if (from_ws) {
        load_state_slice<Tr::kBoxes>(m_acc, p.ws_m + ws_at, HD, 1, w, warp, lane);
      } else {
#pragma unroll
        for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
          for (int i = 0; i < 32; ++i) m_acc[dt][i] = s_acc[dt][i];
      }
    }
  }
  // the copy (kResidual: the copies) of S entering block c, from its registers
  auto copy_state = [&](int c) {
    state_copy<T>(copy_at(c), s_acc, warp, lane);
    if constexpr (kResidual) state_residual_copy<T>(residual_copy, s_acc, warp, lane);
  };
  copy_state(0);
  fence_async_shared();
  named_barrier(bar_id, 128);
  // kTerms: the segment's τ, and whether the sequence's final-state gradient meets its last
  // token here; the consumers' barrier for adding up the terms
  float* termsg = kTerms ? p.terms + (rows.batch * p.seg.H + h) * p.seg.N + rows.tok0 : nullptr;
  const bool fin = kTerms && last_seg && p.dstate_f != nullptr;
  // the barrier of all consumers (kTerms: adding up the terms; kShareP: P published)
  const int consumers_bar = 1 + Tr::kConsumers;

  // Per block c the warpgroup issues P(c + 1) before it finishes block c, so that the tensor
  // cores have work while it stores outputs and the state copy (kTerms: P(c) at the block's
  // start, the state and the moment leave no room for it). Without kTerms, per block:
  //   not kEarly        issue Q S; mask P(c); wait Q S; issue P V, S, P(c+1); wait S, P V;
  //                     outputs, copy of S; wait P(c+1)
  //   kEarly            issue Q S, S; mask P(c); wait Q S; issue P V, P(c+1); wait S; copy of S;
  //                     wait P V; outputs; wait P(c+1)
  //   kShareP           kEarly's, but P(c) computed and masked by consumer c % 2 alone, which
  //                     publishes it (16-bit box) before the consumers meet after Q S; both
  //                     read it as P V's A operand
  float p_acc[32];
  if (!kTerms && nblk > 0) {
    mbar_wait(ring.full(0), 0);
    if (!kShareP || w_uniform == 0) {
      wgmma_fence();
      issue_qk<T, HD, 8192, kEarly>(p_acc, tile(0, 0), tile(0, 1));
      wgmma_commit();
    }
    // kEarly: nothing pending at the loop's head, or ptxas, unable to tell which group
    // is, waits for Q S before the state update touches S_w's registers (C7517)
    if constexpr (kEarly) wgmma_wait<0>();
  }
  for (int c = 0; c < nblk; ++c) {
    const int s = c % kStages;
    const int blk = kReverse ? nblk - 1 - c : c;  // the block's place in the segment
    const int n = min(64, si.len - blk * 64);
    const uint32_t uQ = tile(s, 0), uK = tile(s, 1), uV = tile(s, 2) + w * Tr::kBoxBytes;
    const uint32_t uR = tile(s, 3), uRw = uR + w * Tr::kBoxBytes;  // kTerms: the real q
    // kShareP: whether this consumer computes P(c) (and publishes it at uP); else each does
    const bool owner = !kShareP || (c & 1) == w_uniform;
    const uint32_t uP = pboxes + (c & 1) * Tr::kBoxBytes;
    if (kTerms) mbar_wait(ring.full(s), (c / kStages) & 1);
    if (n < 64) {
      // rows past the sequence's end may hold the next packed sequence (finite or not):
      // zero them in V, the one operand whose masked rows would still meet a 0 · x (and in
      // the real q's box, G's operand)
      zero_rows(uV, n, t);
      if (kTerms) zero_rows(uRw, n, t);
      fence_async_shared();
      named_barrier(bar_id, 128);
    }

    const int rb = r0 + (kTerms ? opaque_zero() : 0);  // r0, with kTerms rebuilt in each block
    float o_acc[32];
    uint32_t pa[4][4];
    // S_w = λ^n S_w + Σ_dt (diag(λ^{n-1-j}) K_dt)ᵀ V_w, token j's weight 0 past n; issued and
    // committed, not waited for (without kTerms)
    // (kWeightV: Σ_dt K_dtᵀ (diag(λ^{n-1-j}) V_w) from this consumer's box uB, rewritten in
    // every block: the previous block's update, its reader, was waited for in that block
    // before the warpgroup's barrier at the block's end)
    auto issue_state_update = [&] {
      uint32_t ka[Tr::kBoxes][4][4];
      uint32_t uB = uV;
      if constexpr (kWeightV) {
        uB = wboxes + w * Tr::kBoxBytes;
        weighted_b_operands<T, Tr::kBoxes>(s_acc, ka, dec, nl2, p.scale, uK, uV, uB, t, bar_id, n);
      } else {
        state_update_operands<T, Tr::kBoxes>(s_acc, ka, dec, nl2, p.scale, uK, warp, lane, n);
      }
      wgmma_fence();
      issue_state_products<T>(s_acc, ka, uB);
      wgmma_commit();
    };
    float part0 = 0.f, part1 = 0.f;  // kTerms: τ of rows r0, r1 over this thread's share
    if constexpr (kTerms) {
      // P = Q Kᵀ and the pairs' rq Kᵀ (the real q and the V slot's k, both fp32), then the
      // block's pairs c Σ_{j<r} (r-j) λ^{r-j} P_rj (rq Kᵀ)_rj, each consumer over half of
      // the key groups; then O = Q S_w from the copy of the state entering the block
      float pt[32];
      wgmma_fence();
      issue_qk<T, HD>(p_acc, uQ, uK);
      issue_qk<T, HD>(pt, uR, tile(s, 2));
      wgmma_commit();
      dec.init_mask(nl2, p.scale, rb, tq);
      wgmma_wait<0>();
      fence_regs(p_acc);
      fence_regs(pt);
      masked_frags<T, false>(pa, p_acc, dec.mask, warp, tq, r0, n, [&](int x, float v) {
        const int dist = rb + ((x & 2) ? 8 : 0) - (8 * (x >> 2) + 2 * tq + (x & 1));
        if (Tr::kConsumers == 1 || ((x >> 2) & 1) == w)
          ((x & 2) ? part1 : part0) += (float)dist * pt[x] * v;
      });
      wgmma_fence();
      issue_qs<T, HD>(o_acc, uQ, copy_at(c));
      if constexpr (kResidual) issue_qs<T, HD, false, true>(o_acc, uQ, residual_copy);
      wgmma_commit();
    } else {
      // O = Q S_w from the copy of the state entering the block (kEarly: the state
      // update, which needs only S_w's registers, queued right behind it)
      wgmma_fence();
      issue_qs<T, HD, kEarly>(o_acc, uQ, copy_at(c));
      wgmma_commit();
      if constexpr (kEarly)
        issue_state_update();
      else
        wgmma_wait<1>();  // P(c), pending at c = 0
      fence_regs(p_acc);
      if (owner) masked_frags<T, kReverse>(pa, p_acc, dec.mask, warp, tq, r0, n);
      if (kShareP && owner) {
        words_to_box(uP, [&](int kk, int i) { return pa[kk][i]; }, warp, lane);
        fence_async_shared();
      }
    }
    wgmma_wait<kEarly ? 1 : 0>();  // Q S (kEarly: the state update may still run)
    // kShareP: P(c) is in uP; and both consumers are done with their state copies (Q S),
    // which are then rewritten in place, and with block c - 1's P box (P V, waited for in block
    // c - 1), which the owner of block c + 1 rewrites
    if constexpr (kShareP) named_barrier(consumers_bar, 128 * Tr::kConsumers);
    fence_regs(o_acc);
    const float row0 = n == 64 && !kTerms ? dec.row[0] : Decay<kReverse>::row(nl2, p.scale, rb, n);
    const float row1 = n == 64 && !kTerms ? dec.row[1] : Decay<kReverse>::row(nl2, p.scale, rb + 8, n);
#pragma unroll
    for (int i = 0; i < 32; ++i) o_acc[i] *= (i & 2) ? row1 : row0;
    if constexpr (kTerms) {  // r · rq_r·(the inter-block output), this consumer's columns
      float d0, d1;
      row_dots<T>(d0, d1, o_acc, uRw, r0, tq);
      part0 += (float)r0 * d0;
      part1 += (float)r1 * d1;
    }
    // O += P V_w (kShareP: P from its box, a K-major operand like Q)
    wgmma_fence();
    if constexpr (kShareP) {
      const uint64_t dP = desc_sw128(uP);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_ss_64x64<T, true>(o_acc, desc_add(dP, kk * 32), desc_sw128(uV + kk * 2048), true);
    } else {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(o_acc, pa[kk], desc_sw128(uV + kk * 2048));
    }
    wgmma_commit();
    // outputs (scale already applied): a full block through the staging box and one TMA
    // store (issued at the end of the iteration); a partial one (its rows past n may be the
    // next sequence's) row by row. kTerms: right after P V, to free the output's registers.
    auto stage_outputs = [&] {
      if (n == 64) {
        if (t == 0) bulk_wait_all<true>();  // the previous block's store has read the box
        named_barrier(bar_id, 128);
        tile_to_box<T>(out_box, o_acc, warp, lane);
      } else {
        store_rows<T>(rows.at<T>(p.o, p.o_bs, p.o_hs, p.o_rs) + (int64_t)blk * 64 * p.o_rs + 64 * w + 2 * tq,
                      p.o_rs, o_acc, r0, n);
      }
    };
    if constexpr (kTerms) {
      wgmma_wait<0>();
      fence_regs(o_acc);
      stage_outputs();
    }

    float first = 0.f;  // kTerms: the warp's share of the block's moment term c <M, G>
    if constexpr (kTerms) {
      first = p.scale * moment_share<T, Tr::kBoxes>(m_acc, uQ, uRw, nl2, warp, lane, n);
      dec.set_block(nl2, p.scale, r0, tq + opaque_zero(), n);
    }
    if constexpr (kTerms) {
      float wk[4][4], total;
      dec.keys(wk, total, nl2, p.scale, tq, n);
      // M = λ^n (M + n S) + Σ_dt (diag((n-j) λ^{n-1-j}) K_dt)ᵀ V_w (M and S at the block's
      // start), split operands
      float wm[4][4];  // the moment's key weights
      moment_decay(m_acc, s_acc, wm, wk, total, tq, n);
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
        split_update_box<T>(m_acc[dt], uK + dt * 8192, uV, wm, warp, lane, n);
      // S_w likewise, its own weights (λ^{n-1-j}), split operands, one box at a time
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
        for (int i = 0; i < 32; ++i) s_acc[dt][i] *= total;
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
        split_update_box<T>(s_acc[dt], uK + dt * 8192, uV, wk, warp, lane, n);
    } else if constexpr (!kEarly) {
      issue_state_update();
    }

    const bool next = c + 1 < nblk;
    // whether this consumer issues P(c + 1) (kShareP: block c + 1 is the other consumer's)
    const bool p_next = next && !kTerms && (!kShareP || !owner);
    if (next && !kTerms) {  // P(c + 1) runs under this block's epilogue
      const int s1 = (c + 1) % kStages;
      mbar_wait(ring.full(s1), ((c + 1) / kStages) & 1);
      if (p_next) {
        wgmma_fence();
        issue_qk<T, HD, 8192, kEarly>(p_acc, tile(s1, 0), tile(s1, 1));
        wgmma_commit();
      } else {
        // kShareP: an empty group, so that the waits below count the same groups in both
        // consumers (waits that differ by the branch make ptxas serialise every wgmma, C7514);
        // ptxas makes it a dummy wgmma (m64n8k16) on this path alone, which a commit after
        // the join would put on both paths
        wgmma_commit();
      }
    }
    if (kEarly && next) {
      // the state update (committed before P V) is done first: its copy goes in under P V
      // and P(c + 1)
      wgmma_wait<2>();
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(s_acc[dt]);
      copy_state(c + 1);
    }
    if (next && !kTerms) {
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(s_acc[dt]);
    if constexpr (!kTerms) fence_regs(o_acc);  // (kTerms: staged already)
    if constexpr (kTerms) {  // the block's τ, the final state's term on the sequence's last token
      const float last = fin && c == nblk - 1
                             ? final_share<Tr::kBoxes>(m_acc, s_acc,
                                                       p.dstate_f + ((int64_t)si.seq * p.seg.H + h) * HD * HD,
                                                       p.state_in_sd, p.state_in_se, w, warp, lane)
                             : 0.f;
      block_terms<Tr::kConsumers>(termsg + blk * 64, red + (c & 1) * Tr::kRedFloats, part0, part1,
                                  first, last, w, t, r0, n, consumers_bar);
    }
    if constexpr (!kTerms) stage_outputs();
    if (next && !kEarly) copy_state(c + 1);
    fence_async_shared();
    named_barrier(bar_id, 128);  // the warpgroup is done with stage s (and the old copy)
    if (t == 0) {
      if (n == 64) {
        tma_store_4d(&tm_o, out_box, 64 * w, (int)rows.tok0 + blk * 64, h, (int)rows.batch);
        bulk_commit();
      }
      mbar_arrive(ring.empty(s));
    }
    // P(c + 1) completes inside the iteration: an accumulator still being written must not
    // cross the loop's back edge (the compiler would copy it there and serialise every wgmma)
    wgmma_wait<0>();
  }
  wgmma_wait<0>();  // (nothing is pending; tells the compiler so for the nblk == 0 path)
  if (t == 0) bulk_wait_all<false>();  // the output stores are done with smem

  const int64_t out_row = last_seg && p.state_out != nullptr ? state_out_row(p.state_rows, si.seq) : -1;
  if (out_row >= 0)
    store_state_slice<Tr::kBoxes>(p.state_out + (out_row * p.seg.H + h) * HD * HD, s_acc, w, warp, lane);
#endif
}

// Pass 1 by la_state_sm90.cuh: the local state of each segment (or part of it) into p.ws_local.
template <typename T, int HD>
void run_state_sm90(const FwdParams& p, bool reverse, cudaStream_t stream);

// A 4-D TMA map over a (B, H, N, HD) 16-bit tensor with element strides (bs, hs, rs) and a
// unit last stride, read as (64 tokens, 64 columns) boxes with the 128-byte swizzle.
CUtensorMap make_tile_map(const void* base, bool bf16, int HD, int N, int H, int B, int64_t rs,
                          int64_t hs, int64_t bs);

template <typename T, int HD, bool kReverse, bool kTerms, bool kResidual = false>
void launch_fwd_sm90(const CUtensorMap (&m)[5], const FwdParams& p, cudaStream_t stream) {
  using Tr = Sm90FwdTraits<T, HD, kReverse, kTerms>;
  auto kernel = la_fwd_sm90_kernel<T, HD, kReverse, kTerms, kResidual>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmem);
  kernel<<<dim3(p.seg.num_segs, p.seg.H), Tr::kThreads, Tr::kSmem, stream>>>(m[0], m[1], m[2], m[3],
                                                                             m[4], p);
}

// With p.terms (the dq sweep with d slope terms) forward only: pass 1 with moments
// (la_state_sm90.cuh kMoments), pass 2 with the terms.
template <typename T, int HD>
void run_fwd_sm90(const FwdParams& p, bool pass1, bool reverse, cudaStream_t stream) {
  const bool terms = p.terms != nullptr;
  if (terms && reverse)
    throw std::runtime_error("lightning_attn (cuda): no sm_90a kernel for these d slope terms");
  if (pass1) return run_state_sm90<T, HD>(p, reverse, stream);
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  const CUtensorMap tq = make_tile_map(p.q, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.q_rs, p.q_hs, p.q_bs);
  const CUtensorMap tk = make_tile_map(p.k, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.k_rs, p.k_hs, p.k_bs);
  const CUtensorMap tv = make_tile_map(p.v, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.v_rs, p.v_hs, p.v_bs);
  const CUtensorMap to = make_tile_map(p.o, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.o_rs, p.o_hs, p.o_bs);
  // the real q of the terms; without them a placeholder the kernel never reads
  const CUtensorMap tr = terms ? make_tile_map(p.rq, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.rq_rs,
                                               p.rq_hs, p.rq_bs)
                               : tq;
  const CUtensorMap maps[5] = {tq, tk, tv, to, tr};
  if (terms && sm90_dslope_residual()) {
    launch_fwd_sm90<T, HD, false, true, true>(maps, p, stream);
  } else if (terms) {
    launch_fwd_sm90<T, HD, false, true>(maps, p, stream);
  } else if (reverse) {
    launch_fwd_sm90<T, HD, true, false>(maps, p, stream);
  } else {
    launch_fwd_sm90<T, HD, false, false>(maps, p, stream);
  }
}

}  // namespace la
