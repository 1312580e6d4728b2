// The dk/dv sweep of the backward for Hopper (sm_90a) in one pass: blocks from the last to the
// first, each loading q, k, v, dO once (TMA) and writing dk and dv, with the gradient state
//   H = λ · (gradient of the state after the block)   (D × E, fp32)
// entering each block (for a block of n tokens, rows i and keys j of the block):
//   dV = diag(λ^{n-1-i}) K H  + (scale · (K Qᵀ)  ⊙ Mᵀ) dO,   Mᵀ_ij = λ^{j-i} (j >= i)
//   dK = diag(λ^{n-1-i}) V Hᵀ + (scale · (V dOᵀ) ⊙ Mᵀ) Q
//   H  = λ^n H + scale · (diag(λ^{j+1}) Q)ᵀ dO
// These are the two reversed-time products of la_fwd_sm90.cuh (kReverse with (K, Q, dO) and
// (V, dO, Q)) sharing their state: 4 tile loads and 2 stores per block instead of 6 and 2. The
// segments' local states (pass 1) are the dV product's pass 1 of that kernel; this is pass 2:
// the incoming state is d final_state (a sequence's last segment) or the reverse scan's, and
// the first segment's outgoing one is d initial_state.
//
// Warpgroups: WG 0 is the producer (one thread issues the TMA loads of the (64, HD) tiles of Q,
// K, V and dO into a kStages-deep ring; 24 registers); WG 1 + w is a consumer owning columns
// [64w, 64w + 64) of E for H and dV, and of D for dK. Each block needs all of H for dK (a
// column of Hᵀ is a row of H), so the consumers write their slices of H into one 16-bit copy
// (double-buffered) and meet at a barrier per block. The copy is read as an MN-major operand
// (K H, its rows d) and as a K-major one (V Hᵀ, rows d with E contiguous): no transposed copy.
//
// The H update's key weights are on dO rather than on Qᵀ, as the forward's kWeightV puts them
// on V: (diag(w) Q)ᵀ dO_w = Qᵀ (diag(w) dO_w). Each consumer writes diag(w) dO_w into its dK
// staging box (shared memory has no room for another; see the kernel for why the box is free
// then) and takes Qᵀ as ldmatrix.trans gives it: the weighting of all D rows of Qᵀ, which every
// consumer did, becomes one of 64 × 64 elements per consumer.
//
// kLean (D = 128) shortens each consumer's instruction stream per full block, which paces the
// sweep there, with the same products and the same roundings: a full block's masks are
// factors (the triangle's zeros folded into BlockDecay::mask once per CTA, full_frags: no
// compare or select per element), every wgmma's descriptors come from its operand's first one
// by desc_add in uniform registers (w broadcast from lane 0), and the H update's key weights
// are a full block's in every block (a partial block's rows from n on are zero already).
// Measured: fwd+bwd 3.5-5% faster at D = 128; at D = 64 (one consumer, two CTAs per SM) 14%
// fewer instructions a block made it 1-2% slower at 16K-64K, so D = 64 keeps the plain path.
//
// kSplit: each stage's Q, K and its V, dO land behind their own barriers. K Qᵀ of block c + 1,
// issued late in block c, waits for Q and K only (loaded first), and V, dO are waited for at
// their first use in block c + 1; each consumer frees a stage as soon as its last product
// reading it is done, before the block's epilogue rather than after it. Why: with one barrier
// per stage, freed at the block's end, ncu put a third of the consumers' cycles between
// instructions on an L1TEX scoreboard, and on a full block's path the only such waits are the
// ring's (the stage of block c + 1 was refilled only once block c − 1 had ended, epilogue
// included). It pays where a CTA has its SM to itself (ncu, H200: D = 128, W at N = 1K, 890 →
// 838 µs a sweep; D = 64, H = 64 at N = 64K, 128 CTAs, 1043 → 867), not where two CTAs share
// it and cover each other's waits (D = 64, H = 64 at 16K, 256 CTAs: 804 → 851; at 1K 896 →
// 892), so run_bwd_sm90 picks it by the grid at D = 64.
#pragma once

#include "la_fwd_sm90.cuh"

namespace la {

namespace sm90 {

// kLean helpers (la_bwd_sm90_kernel): the full 64-token block's path without the partial
// block's compares.

// P ⊙ M of a full block as the A fragments of the four 16-key steps, with the triangle of M
// already in the factors (`maskz`: 0 where the key precedes the row, see the kernel): one
// multiply and half a pack per element, no compare or select. The layout is masked_frags':
// pa[kk][x] holds elements 8kk + 2x and 8kk + 2x + 1.
template <typename T>
__device__ __forceinline__ void full_frags(uint32_t (&pa)[4][4], const float (&p)[32],
                                           const float (&maskz)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int e = 8 * kk + 2 * x;
      pa[kk][x] = Pack2<T>::pack(p[e] * maskz[e], p[e + 1] * maskz[e + 1]);
    }
}

}  // namespace sm90

template <typename T, int HD, bool kSplit>
struct Sm90BwdTraits {
  static_assert(HD == 64 || HD == 128, "specialised head dims");
  static constexpr int kConsumers = HD / 64;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kMinBlocksPerSM = HD == 64 ? 2 : 1;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = HD == 64 ? 232 : 240;
  static constexpr int kStages = 2;
  static constexpr int kBoxBytes = 64 * 64 * 2;        // (64 rows, 64 columns), 16-bit
  static constexpr int kBoxes = HD / 64;               // boxes per (64, HD) tile
  static constexpr int kTileBytes = kBoxes * kBoxBytes;
  static constexpr int kStageBytes = 4 * kTileBytes;   // Q, K, V, dO
  static constexpr int kSliceBytes = HD * 64 * 2;      // a consumer's (D, 64) slice of the H copy
  static constexpr int kCopyBytes = kConsumers * kSliceBytes;
  static constexpr bool kLean = HD == 128;   // see the file's head
  using Ring = sm90::Ring<kStages, kSplit ? 2 : 1>;  // kSplit: (Q, K), (V, dO) apart
  static constexpr int kBarrierBytes = Ring::kBarrierBytes;
  // stages | 2 copies of H | per consumer the dV and dK output boxes | barriers; 1 KiB of
  // slack: the swizzled boxes need 1 KiB alignment, the dynamic base has less
  static constexpr int kSmem = kStages * kStageBytes + 2 * kCopyBytes + kConsumers * 2 * kBoxBytes +
                               kBarrierBytes + 1024;
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert(kMinBlocksPerSM == 1 || 2 * (kSmem + 1024) <= 228 * 1024, "two CTAs per SM");
};

template <typename T, int HD, bool kSplit>
__global__ void __launch_bounds__(Sm90BwdTraits<T, HD, kSplit>::kThreads,
                                  Sm90BwdTraits<T, HD, kSplit>::kMinBlocksPerSM)
    la_bwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q,
                       const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_do,
                       const __grid_constant__ CUtensorMap tm_dk,
                       const __grid_constant__ CUtensorMap tm_dv, const BwdParams p) {
#ifdef LA_SM90_ENABLED
  using namespace sm90;
  using Tr = Sm90BwdTraits<T, HD, kSplit>;
  constexpr int kStages = Tr::kStages;
  constexpr bool kLean = Tr::kLean;
  enum { kQ, kK, kV, kDO };  // tiles of a stage
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const int g = blockIdx.x, h = blockIdx.y;
  const SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  const bool first_seg = si.seg == si.nseg - 1;  // processed first: takes d final_state
  const bool last_seg = si.seg == 0;             // gives d initial_state

  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t copies = base + kStages * Tr::kStageBytes;
  const uint32_t staging = copies + 2 * Tr::kCopyBytes;
  const uint32_t bars = staging + Tr::kConsumers * 2 * Tr::kBoxBytes;
  const typename Tr::Ring ring{bars};
  auto tile = [&](int s, int which) { return base + s * Tr::kStageBytes + which * Tr::kTileBytes; };

  const int tid = threadIdx.x;
  ring.init(Tr::kConsumers);

  const int nblk = (si.len + 63) / 64;
  const SegRows rows = seg_rows(p.seg, si, h);
  const int wg = tid / 128;

  if (wg == 0) {  // ------------------------------------------------------------ producer
    regs_dealloc<Tr::kProducerRegs>();
    if (tid == 0) {  // blocks in reversed order; tiles kQ, kK, kV, kDO
      const CUtensorMap* const maps[] = {&tm_q, &tm_k, &tm_v, &tm_do};
      ring.template produce<Tr::kBoxes>(maps, nblk, /*reverse=*/true, (int)rows.tok0, h,
                                        (int)rows.batch, tile);  // kSplit: (Q, K), (V, dO)
    }
    return;
  }

  // -------------------------------------------------------------------------- consumers
  regs_alloc<Tr::kConsumerRegs>();
  const int w = wg - 1;                       // columns [64w, 64w + 64) of E (H, dV), of D (dK)
  // kLean: w as a value the compiler knows to be the same in the warp (a shuffle from lane 0),
  // so that the shared-memory addresses and wgmma descriptors derived from it are built in
  // uniform registers, not per thread and moved there for every wgmma
  const int wu = kLean ? __shfl_sync(0xffffffffu, w, 0) : w;
  const int t = tid - 128 * wg;               // thread in the warpgroup
  const int warp = t >> 5, lane = t & 31;
  const int gq = lane >> 2, tq = lane & 3;
  const int own_bar = 1 + w;                  // this warpgroup's named barrier
  const int all_bar = 1 + Tr::kConsumers;     // every consumer's
  constexpr int kAll = 128 * Tr::kConsumers;
  const uint32_t slice = wu * Tr::kSliceBytes;  // this consumer's columns of E in an H copy
  const uint32_t dv_box = staging + wu * 2 * Tr::kBoxBytes, dk_box = dv_box + Tr::kBoxBytes;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of a block
  BlockDecay<true> dec;
  dec.init(nl2, p.scale, r0, tq);
  // kLean: a full block's masks as factors. The triangle of Mᵀ (key j kept where j >= row) is
  // the same in every full block, so its zeros go into the factors once here and a full
  // block's P ⊙ M is one multiply per element (full_frags): the kept elements get the same
  // factor and the same rounding as masked_frags', the others 0 (p · 0, p finite: a full
  // block's rows are all the sequence's own tokens) instead of a selected 0. A partial block
  // still selects (masked_frags only reads the factors of kept elements). And the weights of
  // the H update's keys in a full block, once.
  float wfull[4];
  if constexpr (kLean) {
#pragma unroll
    for (int e = 0; e < 32; ++e)
      if (8 * (e >> 2) + 2 * tq + (e & 1) < r0 + ((e & 2) ? 8 : 0)) dec.mask[e] = 0.f;
    row_key_weights<true>(wfull, nl2, p.scale, t, 64);
  }

  // incoming H of the segment: d final_state (a sequence's last segment, or 0 without it),
  // else the reverse scan's
  float h_acc[Tr::kBoxes][32];
  {
    const int64_t off = (first_seg ? (int64_t)si.seq : (int64_t)g) * p.seg.H + h;
    const float* src = first_seg ? (p.dstate_in ? p.dstate_in + off * HD * HD : nullptr)
                                 : p.ws + off * HD * HD;
    load_state_slice<Tr::kBoxes>(h_acc, src, HD, 1, w, warp, lane);
  }
  state_copy<T>(copies + slice, h_acc, warp, lane);
  fence_async_shared();
  named_barrier(all_bar, kAll);

  // Per block c the warpgroup issues K Qᵀ of block c + 1 before it finishes block c, so that
  // the tensor cores have work while it stores dK and the state copy. The first block
  // processed is the segment's last, the only one that may be partial: dO and Q are the
  // operands whose rows past n (maybe the next packed sequence's) would still meet a 0 · x (in
  // the RS products and the state update), so they are zeroed there first; every consumer
  // reads all of Q (K Qᵀ), so all of them wait for the zeros.
  float p_acc[32];
  if (nblk > 0) {
    mbar_wait(ring.full(0), 0);
    if constexpr (kSplit) mbar_wait(ring.full(0, 1), 0);
    const int n = si.len - (nblk - 1) * 64;
    if (n < 64) {
      zero_rows(tile(0, kQ) + w * Tr::kBoxBytes, n, t);
      zero_rows(tile(0, kDO) + w * Tr::kBoxBytes, n, t);
      fence_async_shared();
      named_barrier(all_bar, kAll);
    }
    wgmma_fence();
    issue_qk<T, HD>(p_acc, tile(0, kK), tile(0, kQ));
    wgmma_commit();
  }
  for (int c = 0; c < nblk; ++c) {
    const int s = c % kStages;     // waited for when K Qᵀ of the block was issued
    const int blk = nblk - 1 - c;  // the block's place in the segment
    const int n = min(64, si.len - blk * 64);
    const uint32_t uQ = tile(s, kQ), uK = tile(s, kK), uV = tile(s, kV), uDO = tile(s, kDO);
    const uint32_t uQw = uQ + wu * Tr::kBoxBytes, uDOw = uDO + wu * Tr::kBoxBytes;
    const uint32_t hc = copies + (c & 1) * Tr::kCopyBytes;  // H entering the block
    const float row0 = n == 64 ? dec.row[0] : Decay<true>::row(nl2, p.scale, r0, n);
    const float row1 = n == 64 ? dec.row[1] : Decay<true>::row(nl2, p.scale, r1, n);

    // dV_w = diag(row) K H_w + (K Qᵀ ⊙ Mᵀ) dO_w
    float dv_acc[32], dk_acc[32];
    uint32_t pa[4][4];
    wgmma_fence();
    issue_qs<T, HD, kLean>(dv_acc, uK, hc + slice);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(p_acc);
    fence_regs(dv_acc);
    if (kLean && n == 64)
      full_frags<T>(pa, p_acc, dec.mask);
    else
      masked_frags<T, true>(pa, p_acc, dec.mask, warp, tq, r0, n);
#pragma unroll
    for (int i = 0; i < 32; ++i) dv_acc[i] *= (i & 2) ? row1 : row0;
    // kSplit: the block's V and dO (their group of the stage) from here on; its Q and K were
    // waited for when K Qᵀ was issued
    if constexpr (kSplit) mbar_wait(ring.full(s, 1), (c / kStages) & 1);
    wgmma_fence();
    // kLean: each k step's descriptor by desc_add from the first one
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs_64x64<T>(dv_acc, pa[kk],
                        kLean ? desc_add(desc_sw128(uDOw), kk * 2048) : desc_sw128(uDOw + kk * 2048));
    wgmma_commit();
    // dK_w = diag(row) V Hᵀ_w + (V dOᵀ ⊙ Mᵀ) Q_w; Hᵀ_w from the copy's rows [64w, 64w + 64)
    wgmma_fence();
    issue_qk<T, HD, 8192, kLean>(p_acc, uV, uDO);
    issue_qk<T, HD, Tr::kSliceBytes, kLean>(dk_acc, uV, hc + wu * Tr::kBoxBytes);
    wgmma_commit();

    // dV out while the tensor cores run dK's products: a full block through its staging box
    // (free once this warpgroup's stores of the previous block have read it) and one TMA
    // store at the end of the block, a partial one (rows past n may be the next sequence's)
    // row by row
    wgmma_wait<1>();
    fence_regs(dv_acc);
    if (n == 64) {
      if (t == 0) bulk_wait_all<true>();
      named_barrier(own_bar, 128);
      tile_to_box<T>(dv_box, dv_acc, warp, lane);
    } else {
      store_rows<T>(rows.at<T>(p.dv, p.dv_bs, p.dv_hs, p.dv_rs) + (int64_t)blk * 64 * p.dv_rs + 64 * w + 2 * tq,
                    p.dv_rs, dv_acc, r0, n);
    }

    wgmma_wait<0>();
    fence_regs(p_acc);
    fence_regs(dk_acc);
    if (kLean && n == 64)
      full_frags<T>(pa, p_acc, dec.mask);
    else
      masked_frags<T, true>(pa, p_acc, dec.mask, warp, tq, r0, n);
#pragma unroll
    for (int i = 0; i < 32; ++i) dk_acc[i] *= (i & 2) ? row1 : row0;
    // H_w = λ^n H_w + Σ_dt (diag(scale λ^{j+1}) Q_dt)ᵀ dO_w; token j's weight, 0 past n
    // (as Σ_dt Q_dtᵀ (diag(scale λ^{j+1}) dO_w) from this consumer's dK box. The box's
    // last reader, the TMA store of the previous block's dK, was committed in one bulk group
    // with the dV store; the dV path above waited for that group's reads (bulk_wait_all by
    // t == 0, then the warpgroup's barrier), so the box is free from there on; a partial
    // block is the first processed, after no store. The update reads the box in the group
    // with dK += P₂·Q_w, and dK goes into the box below only after the wait for that group
    // (a wgmma-group is the warpgroup's: its completion ends all four warps' reads).
    // Q's and dO's rows from n on are zeroed before the loop: the masks of a partial block's
    // Qᵀ fragments are not needed, but cost nothing in a full block.)
    uint32_t qa[Tr::kBoxes][4][4];
    const uint32_t uB = dk_box;
    if constexpr (kLean)
      weighted_b_operands<T, Tr::kBoxes, true, true>(h_acc, qa, dec, wfull, nl2, uQ, uDOw, uB, t,
                                                     own_bar, n);
    else
      weighted_b_operands<T, Tr::kBoxes>(h_acc, qa, dec, nl2, p.scale, uQ, uDOw, uB, t, own_bar,
                                         n);
    wgmma_fence();
    if constexpr (kLean) {
      const uint64_t dQw = desc_sw128(uQw), dB = desc_sw128(uB);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(dk_acc, pa[kk], desc_add(dQw, kk * 2048));
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(h_acc[dt], qa[dt][kk], desc_add(dB, kk * 2048));
    } else {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(dk_acc, pa[kk], desc_sw128(uQw + kk * 2048));
      issue_state_products<T>(h_acc, qa, uB);
    }
    wgmma_commit();
    const bool next = c + 1 < nblk;
    if (next) {  // K Qᵀ of block c + 1 runs under this block's epilogue
      const int s1 = (c + 1) % kStages;
      mbar_wait(ring.full(s1), ((c + 1) / kStages) & 1);  // kSplit: its Q and K only
      wgmma_fence();
      issue_qk<T, HD, 8192, kLean>(p_acc, tile(s1, kK), tile(s1, kQ));
      wgmma_commit();
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
    // kSplit: stage s is free here, its last readers (the products with Q_w and the H update)
    // done; the producer may refill it during the epilogue below
    if constexpr (kSplit)
      if (t == 0) mbar_arrive(ring.empty(s));
    fence_regs(dk_acc);
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(h_acc[dt]);

    if (n == 64) {
      tile_to_box<T>(dk_box, dk_acc, warp, lane);
    } else {
      store_rows<T>(rows.at<T>(p.dk, p.dk_bs, p.dk_hs, p.dk_rs) + (int64_t)blk * 64 * p.dk_rs + 64 * w + 2 * tq,
                    p.dk_rs, dk_acc, r0, n);
    }
    if (next) state_copy<T>(copies + ((c + 1) & 1) * Tr::kCopyBytes + slice, h_acc, warp, lane);
    fence_async_shared();
    // every consumer is done with stage s and with copy c & 1 (written again after the next
    // block), and copy (c + 1) & 1 is whole
    named_barrier(all_bar, kAll);
    if (t == 0) {
      if (n == 64) {
        const int tok = (int)rows.tok0 + blk * 64;
        tma_store_4d(&tm_dv, dv_box, 64 * w, tok, h, (int)rows.batch);
        tma_store_4d(&tm_dk, dk_box, 64 * w, tok, h, (int)rows.batch);
        bulk_commit();
      }
      if constexpr (!kSplit) mbar_arrive(ring.empty(s));
    }
    // K Qᵀ of block c + 1 completes inside the iteration: an accumulator still being written
    // must not cross the loop's back edge (the compiler would copy it there and serialise
    // every wgmma)
    wgmma_wait<0>();
  }
  wgmma_wait<0>();  // (nothing is pending; tells the compiler so for the nblk == 0 path)
  if (t == 0) bulk_wait_all<false>();  // the output stores are done with shared memory

  if (last_seg && p.dstate_out != nullptr)
    store_state_slice<Tr::kBoxes>(p.dstate_out + ((int64_t)si.seq * p.seg.H + h) * HD * HD, h_acc, w,
                                  warp, lane);
#endif
}

template <typename T, int HD>
void run_bwd_sm90(const BwdParams& p, bool one_per_sm, cudaStream_t stream) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  const SegParams& sg = p.seg;
  const CUtensorMap tq = make_tile_map(p.q, kBf16, HD, sg.N, sg.H, sg.B, p.q_rs, p.q_hs, p.q_bs);
  const CUtensorMap tk = make_tile_map(p.k, kBf16, HD, sg.N, sg.H, sg.B, p.k_rs, p.k_hs, p.k_bs);
  const CUtensorMap tv = make_tile_map(p.v, kBf16, HD, sg.N, sg.H, sg.B, p.v_rs, p.v_hs, p.v_bs);
  const CUtensorMap tdo = make_tile_map(p.dout, kBf16, HD, sg.N, sg.H, sg.B, p.do_rs, p.do_hs, p.do_bs);
  const CUtensorMap tdk = make_tile_map(p.dk, kBf16, HD, sg.N, sg.H, sg.B, p.dk_rs, p.dk_hs, p.dk_bs);
  const CUtensorMap tdv = make_tile_map(p.dv, kBf16, HD, sg.N, sg.H, sg.B, p.dv_rs, p.dv_hs, p.dv_bs);
  auto launch = [&](auto split) {
    constexpr bool kSplit = decltype(split)::value;
    using Tr = Sm90BwdTraits<T, HD, kSplit>;
    auto kernel = la_bwd_sm90_kernel<T, HD, kSplit>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmem);
    kernel<<<dim3(sg.num_segs, sg.H), Tr::kThreads, Tr::kSmem, stream>>>(tq, tk, tv, tdo, tdk, tdv, p);
  };
  // D = 128 runs one CTA per SM; D = 64 two, unless the grid leaves an SM one (file's head)
  if (HD == 128 || one_per_sm)
    launch(std::true_type{});
  else if constexpr (HD == 64)
    launch(std::false_type{});
}

}  // namespace la
