// Pass 1 of the sm_90a forward kernel (la_fwd_sm90.cuh) and of its reversed sweep: the local
// state from zero of each segment, or of each part of it (SegParams::parts, so that pass 1
// fills the machine when pass 2's segments do not), K and V only,
//   S_w = λ^n S_w + (diag(λ^{n-1-j}) K)ᵀ V_w    per block of n tokens
// (reversed: key weights scale·λ^{j+1}), the same warpgroups and state slices as pass 2.
//
// Pass 1 has no outputs, so a block is short on tensor work (8 SS wgmma per warpgroup) and
// the kernel must stream K and V at the copy rate. Per block the time goes to waiting
// (stage, weighted keys, wgmma completion), not to the math, so this kernel
//  - keeps no Q slot, state copies or output box: its ring of K, V stages is twice as deep;
//  - weights the keys where they lie: each consumer warpgroup multiplies its own 64-column box
//    of the K tile in shared memory by the key weights (one barrier over the consumers a
//    block), and the products read both operands from shared memory (Kᵀ as an MN-major A).
//    Built in registers instead (ldmatrix.trans, a multiply and a conversion per element,
//    ~330 instructions a block per thread against ~180) pass 1 took 2-3% longer (bench/NOTES.md);
//  - takes kGroup full blocks per loop iteration, weighted relative to the group's end
//    (block b of G: key weights × λ^{64(G-1-b)}), scaling the state by λ^{64G} once per group,
//    and weights each block while the previous block's wgmma are still running;
//  - releases a stage per warp, as soon as that warp's wgmma on it completed (no barrier).
// Exponents stay below 64·kGroup + 64, so weights only underflow towards 0 for strong decay.
//
// kMoments (forward only: pass 1 of the dq sweep with the d slope terms, la_fwd_sm90.cuh
// kTerms): beside S the moment of the segment (docs/DSLOPE.md, la_fwd_kernel.cuh kSlope),
//   M = λ^n (M + n S) + (diag((n-j) λ^{n-1-j}) K)ᵀ V_w    per block of n tokens
// (M and S at the block's start), in fp32 accumulators beside S's, stored to p.ws_m_local
// beside the local state (per part, as S; the scan combines the parts' (S, M)). The roundings
// are the mma.sync kernel's (with parts but for the order of the fp32 sums, which the scan
// adds part by part): both updates block by block with the weighted keys split into two
// 16-bit operands (as split_update_box), so no groups: the lifted weights of a group would
// be other operands.
//
// p.seg.horizon_log2 (with decay): a token's weight in the state, λ^d at distance d from the
// state's reference (forward: the segment's last token; reversed: the token before its
// first), falls below 2^-190 past the horizon d = 190 / (slope · log2 e), and whole blocks
// past it are skipped. Such a block adds less than 2^-190 times a partial state to the state;
// for entries below 2^64 (a sum of |k_i v_j| that no fp16 input and no bf16 activation of a
// model reaches) that is below 2^-126, the smallest normal float32, which these kernels'
// fast math flushes to 0. So the state is the full sum up to float32 rounding, and pass 1
// reads only the tokens within each head's horizon: for H = 32 ALiBi slopes and 16K-token
// segments a third of them. With moments the horizon is d = 222 / (slope · log2 e): a moment
// weights a token by (d + 1) λ^d, d + 1 ≤ 2^31 (token counts are 32-bit), which past it is
// below 2^-191 (and so is n S in the scan's combination). A part with no tokens
// left stores nothing (pass1_stores; the scan reads only the stored parts). decay_horizon,
// pass1_part: la_params.h, shared with the scan.
#pragma once

#include "la_fwd_sm90.cuh"

namespace la {

template <typename T, int HD>
struct Sm90StateTraits {
  using Fwd = Sm90FwdTraits<T, HD>;
  static constexpr int kGroup = 4;                          // full blocks per loop iteration
  static constexpr int kStageBytes = 2 * Fwd::kTileBytes;   // K, V
  static constexpr int kStages = HD == 128 ? 7 : 6;
  static constexpr int kBarrierBytes = sm90::Ring<kStages>::kBarrierBytes;
  static constexpr int kSmem = kStages * kStageBytes + kBarrierBytes + 1024;  // 1 KiB: alignment
  static_assert(kStages > kGroup, "a group's stages and the next loads");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert(Fwd::kMinBlocksPerSM == 1 || 2 * (kSmem + 1024) <= 228 * 1024, "two CTAs per SM");
};

template <typename T, int HD, bool kReverse, bool kMoments = false>
__global__ void __launch_bounds__(Sm90FwdTraits<T, HD>::kThreads,
                                  Sm90FwdTraits<T, HD>::kMinBlocksPerSM)
    la_state_sm90_kernel(const __grid_constant__ CUtensorMap tm_k,
                         const __grid_constant__ CUtensorMap tm_v, const FwdParams p) {
#ifdef LA_SM90_ENABLED
  static_assert(!(kReverse && kMoments), "the moments are the forward dq sweep's");
  static_assert(Sm90FwdTraits<T, HD>::kConsumers == HD / 64, "consumer w weights K box w");
  using namespace sm90;
  using Tr = Sm90StateTraits<T, HD>;
  using Fwd = Sm90FwdTraits<T, HD>;
  constexpr int kStages = Tr::kStages, kTiles = HD / 64;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  // with the horizon, heads in reverse order: CTAs start roughly in grid order, and the
  // weakest decay (ALiBi's last heads) keeps the most blocks, so its parts go first
  const int h = p.seg.horizon_log2 ? p.seg.H - 1 - (int)blockIdx.y : (int)blockIdx.y;
  const int g = blockIdx.x / p.seg.parts, part = blockIdx.x - g * p.seg.parts;
  SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  // nobody reads the local state of the last segment in processing order
  if (kReverse ? si.seg == 0 : si.seg == si.nseg - 1) return;
  // the part's tokens, within the horizon (above)
  si = pass1_part(p.seg, si, part, pass1_horizon(p.seg, p.slope, h), kReverse);
  if (!pass1_stores(si.len, part, kReverse)) return;

  // smem: [stage][K V][box] | full[], empty[] barriers
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t bars = base + kStages * Tr::kStageBytes;
  const Ring<kStages> ring{bars};
  auto tile = [&](int s, int which) { return base + s * Tr::kStageBytes + which * Fwd::kTileBytes; };

  const int tid = threadIdx.x;
  ring.init(4 * Fwd::kConsumers);  // every consumer warp releases

  const int nblk = (si.len + 63) / 64;
  const SegRows rows = seg_rows(p.seg, si, h);
  const int wg = tid / 128;

  if (wg == 0) {  // ------------------------------------------------------------ producer
    regs_dealloc<Fwd::kProducerRegs>();
    if (tid == 0) {
      const CUtensorMap* const maps[] = {&tm_k, &tm_v};
      ring.template produce<Fwd::kBoxes>(maps, nblk, kReverse, (int)rows.tok0, h,
                                         (int)rows.batch, tile);
    }
    return;
  }

  // -------------------------------------------------------------------------- consumers
  regs_alloc<Fwd::kConsumerRegs>();
  const int w = wg - 1;                       // E columns [64w, 64w + 64)
  const int t = tid - 128 * wg;               // thread in the warpgroup
  const int warp = t >> 5, lane = t & 31;
  const int tq = lane & 3;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  BlockDecay<kReverse> dec;  // (only its key weights and λ^64 are used here)
  dec.set_block(nl2, p.scale, warp * 16 + (lane >> 2), tq, 64);
  // block b of a group: its key weights times λ^{64(kGroup-1-b)}; the group's decay λ^{64·kGroup}
  float lift[Tr::kGroup];
#pragma unroll
  for (int b = 0; b < Tr::kGroup; ++b) lift[b] = decay_pow(nl2, (float)(64 * (Tr::kGroup - 1 - b)));
  const float group_total = decay_pow(nl2, (float)(64 * Tr::kGroup));
  // the key weights of a full block for this thread's rows of its K box (weighted_rows:
  // tokens t / 8 + 16q)
  float krow[4];
  row_key_weights<kReverse>(krow, nl2, p.scale, t, 64);

  float s_acc[kTiles][32];
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 32; ++i) s_acc[dt][i] = 0.f;
  float m_acc[kTiles][32];  // kMoments: the moment slice (unused, and dropped, otherwise)
  if constexpr (kMoments) {
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
      for (int i = 0; i < 32; ++i) m_acc[dt][i] = 0.f;
  }

  // this warp is done reading stage c % kStages: its ldmatrix ran before its wgmma were issued
  auto release = [&](int c) {
    if (lane == 0) mbar_arrive(ring.empty(c % kStages));
  };
  // Blocks c .. c + G - 1 in processing order: G == kGroup full blocks, or G == 1 block of
  // any length (a partial one is the segment's last block). Nothing is in flight on return.
  auto blocks = [&](auto group, int c) {
    constexpr int G = decltype(group)::value;
    const int blk = kReverse ? nblk - 1 - c : c;
    const int n = G == 1 ? min(64, si.len - blk * 64) : 64;
    float total = G > 1 ? group_total : dec.block_total(nl2, n);
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
      for (int i = 0; i < 32; ++i) s_acc[dt][i] *= total;
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt) fence_regs(s_acc[dt]);
#pragma unroll
    for (int b = 0; b < G; ++b) {
      const int s = (c + b) % kStages;
      const uint32_t uK = tile(s, 0), uV = tile(s, 1) + w * Fwd::kBoxBytes;
      const uint32_t uKw = uK + w * Fwd::kBoxBytes;  // this consumer's box of K
      mbar_wait(ring.full(s), ((c + b) / kStages) & 1);
      float wr[4];
      if (n < 64) {
        // rows past the sequence's end may hold the next packed sequence (finite or not):
        // zero them in V and in K (whose weights there are 0, but 0 · NaN is not)
        zero_rows(uV, n, t);
        zero_rows(uKw, n, t);
        named_barrier(1 + w, 128);
        row_key_weights<kReverse>(wr, nl2, p.scale, t, n);
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) wr[q] = G == 1 ? krow[q] : krow[q] * lift[b];
      }
      weighted_rows<T, true>(uKw, uKw, wr, t);
      fence_async_shared();
      named_barrier(1 + Fwd::kConsumers, 128 * Fwd::kConsumers);  // every box of K weighted
      wgmma_fence();
      const uint64_t dK = desc_sw128(uK), dV = desc_sw128(uV);
#pragma unroll
      for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_ss_64x64<T, true, true>(s_acc[dt], desc_add(dK, dt * Fwd::kBoxBytes + kk * 2048),
                                        desc_add(dV, kk * 2048), true);
      wgmma_commit();
      if (b > 0) {  // block b - 1 is done; block b runs while the next block is weighted
        wgmma_wait<1>();
        release(c + b - 1);
      }
    }
    // an accumulator in flight must not cross the loop's back edge (the compiler would copy
    // it there and serialise every wgmma)
    wgmma_wait<0>();
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt) fence_regs(s_acc[dt]);
    release(c + G - 1);
  };

  // kMoments: block c (forward) of n tokens, M's update then S's, one 64-row box of D at a
  // time with split operands (as split_update_box); nothing is in flight when the stage is
  // released
  auto moment_block = [&](int c) {
    const int s = c % kStages, n = min(64, si.len - c * 64);
    const uint32_t uK = tile(s, 0), uV = tile(s, 1) + w * Fwd::kBoxBytes;
    mbar_wait(ring.full(s), (c / kStages) & 1);
    if (n < 64) {  // (as in `blocks`)
      zero_rows(uV, n, t);
      fence_async_shared();
      named_barrier(1 + w, 128);
    }
    float wk[4][4], wm[4][4], total;
    dec.keys(wk, total, nl2, p.scale, tq, n);
    moment_decay(m_acc, s_acc, wm, wk, total, tq, n);
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
      for (int i = 0; i < 32; ++i) s_acc[dt][i] *= total;
    // the box updates j = (M, then S) × box dt: each one's split operands are built while the
    // previous one's wgmma run (two operand sets, alternating)
    uint32_t hi[2][1][4][4], lo[2][1][4][4];
#pragma unroll
    for (int j = 0; j < 2 * kTiles; ++j) {
      const int dt = j % kTiles;
      float(&acc)[32] = j < kTiles ? m_acc[dt] : s_acc[dt];
      weighted_keys_t<T, 1, true>(hi[j & 1], uK + dt * 8192, j < kTiles ? wm : wk, warp, lane, n,
                                  lo[j & 1]);
      fence_regs(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        wgmma_rs_64x64<T>(acc, hi[j & 1][0][kk], desc_sw128(uV + kk * 2048));
        wgmma_rs_64x64<T>(acc, lo[j & 1][0][kk], desc_sw128(uV + kk * 2048));
      }
      wgmma_commit();
      if (j > 0) wgmma_wait<1>();  // update j - 1 is done: its operand set is free
    }
    wgmma_wait<0>();
#pragma unroll
    for (int dt = 0; dt < kTiles; ++dt) {
      fence_regs(m_acc[dt]);
      fence_regs(s_acc[dt]);
    }
    release(c);
  };

  if constexpr (kMoments) {
    for (int c = 0; c < nblk; ++c) moment_block(c);
  } else {
    // a partial block is the first one in reversed order, else the last one
    const int partial = si.len % 64 == 0 ? -1 : (kReverse ? 0 : nblk - 1);
    for (int c = 0; c < nblk;) {
      if (c + Tr::kGroup <= nblk && (partial < c || partial >= c + Tr::kGroup)) {
        blocks(std::integral_constant<int, Tr::kGroup>{}, c);
        c += Tr::kGroup;
      } else {
        blocks(std::integral_constant<int, 1>{}, c);
        c += 1;
      }
    }
  }
  wgmma_wait<0>();  // (nothing is pending; tells the compiler so for the nblk == 0 path)
  const int64_t at = ((int64_t)blockIdx.x * p.seg.H + h) * HD * HD;
  store_state_slice<kTiles>(p.ws_local + at, s_acc, w, warp, lane);
  if constexpr (kMoments) store_state_slice<kTiles>(p.ws_m_local + at, m_acc, w, warp, lane);
#endif
}

// With p.terms (the dq sweep with d slope terms: forward) the moments too.
template <typename T, int HD>
void run_state_sm90(const FwdParams& p, bool reverse, cudaStream_t stream) {
  using Tr = Sm90StateTraits<T, HD>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  const bool moments = p.terms != nullptr;
  if (moments && (reverse || p.ws_m_local == nullptr))
    throw std::runtime_error("lightning_attn (cuda): the sm_90a pass 1 with moments is forward, "
                             "into ws_m_local");
  const CUtensorMap tk = make_tile_map(p.k, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.k_rs, p.k_hs, p.k_bs);
  const CUtensorMap tv = make_tile_map(p.v, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.v_rs, p.v_hs, p.v_bs);
  auto kernel = moments ? la_state_sm90_kernel<T, HD, false, true>
                : reverse ? la_state_sm90_kernel<T, HD, true>
                          : la_state_sm90_kernel<T, HD, false>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmem);
  kernel<<<dim3(p.seg.num_segs * p.seg.parts, p.seg.H), Sm90FwdTraits<T, HD>::kThreads, Tr::kSmem,
           stream>>>(tk, tv, p);
}

}  // namespace la
