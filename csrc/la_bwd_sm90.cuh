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
// With kByGradient (D = 128; run_bwd_sm90 picks it under LIGHTNING_ATTENTION_SM90_BWD_SHARED_P=1)
// the consumers split the outputs by gradient instead: WG 1 computes dV on all columns of E,
// WG 2 dK on all columns of D, so each of the score products K Qᵀ and V dOᵀ is computed once
// per block rather than by both consumers; H stays split by columns of E as above.
#pragma once

#include "la_fwd_sm90.cuh"

namespace la {

template <typename T, int HD>
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
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  // stages | 2 copies of H | per consumer two output boxes | barriers; 1 KiB of
  // slack: the swizzled boxes need 1 KiB alignment, the dynamic base has less
  static constexpr int kSmem = kStages * kStageBytes + 2 * kCopyBytes + kConsumers * 2 * kBoxBytes +
                               kBarrierBytes + 1024;
  static_assert(kSmem <= 227 * 1024, "shared memory per block");
  static_assert(kMinBlocksPerSM == 1 || 2 * (kSmem + 1024) <= 228 * 1024, "two CTAs per SM");
};

namespace sm90 {

// The gradients of the sweep and the tiles of a stage. Gradient G is the reversed-time product
// with (X, Y, Z) = (K, Q, dO) for dV and (V, dO, Q) for dK: score X Yᵀ, state product X H (dV,
// the H copy as an MN-major operand) or X Hᵀ (dK, the copy as a K-major one), then P Z.
enum BwdTile { kTileQ, kTileK, kTileV, kTileDO };
enum BwdGrad { kGradDV, kGradDK };
template <int G>
struct BwdOperands {
  static constexpr int kX = G == kGradDV ? kTileK : kTileV;
  static constexpr int kY = G == kGradDV ? kTileQ : kTileDO;
  static constexpr int kZ = G == kGradDV ? kTileDO : kTileQ;
};

// acc = X · (columns [64c, 64c + 64) of H, or of Hᵀ for dK), from the H copy at `hc`: for dV a
// consumer slice of the copy, for dK the copy's rows [64c, 64c + 64), its slices (the k steps)
// kSliceBytes apart.
template <typename T, int HD, int G>
__device__ __forceinline__ void issue_state_product(float (&acc)[32], uint32_t uX, uint32_t hc,
                                                    int c) {
  constexpr int kSliceBytes = Sm90BwdTraits<T, HD>::kSliceBytes;
  if constexpr (G == kGradDV)
    issue_qs<T, HD>(acc, uX, hc + c * kSliceBytes);
  else
    issue_qk<T, HD, kSliceBytes>(acc, uX, hc + c * Sm90BwdTraits<T, HD>::kBoxBytes);
}

}  // namespace sm90

// kByGradient (D = 128 only): WG 1 computes all of dV and WG 2 all of dK, each on both column
// halves, so that each score product is computed once per block; else WG 1 + w computes dV
// and dK on the columns [64w, 64w + 64), both score products in each consumer.
template <typename T, int HD, bool kByGradient>
__global__ void __launch_bounds__(Sm90BwdTraits<T, HD>::kThreads,
                                  Sm90BwdTraits<T, HD>::kMinBlocksPerSM)
    la_bwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q,
                       const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_do,
                       const __grid_constant__ CUtensorMap tm_dk,
                       const __grid_constant__ CUtensorMap tm_dv, const BwdParams p) {
#ifdef LA_SM90_ENABLED
  using namespace sm90;
  using Tr = Sm90BwdTraits<T, HD>;
  static_assert(!kByGradient || Tr::kConsumers == 2, "a consumer per gradient: D = 128 only");
  constexpr int kStages = Tr::kStages;
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
  const Ring<kStages> ring{bars};
  auto tile = [&](int s, int which) { return base + s * Tr::kStageBytes + which * Tr::kTileBytes; };

  const int tid = threadIdx.x;
  ring.init(Tr::kConsumers);

  const int nblk = (si.len + 63) / 64;
  const SegRows rows = seg_rows(p.seg, si, h);
  const int wg = tid / 128;

  if (wg == 0) {  // ------------------------------------------------------------ producer
    regs_dealloc<Tr::kProducerRegs>();
    if (tid == 0) {
      tma_prefetch_desc(&tm_q);
      tma_prefetch_desc(&tm_k);
      tma_prefetch_desc(&tm_v);
      tma_prefetch_desc(&tm_do);
      const int b = (int)rows.batch;
      ring.produce(nblk, 4 * Tr::kTileBytes, [&](int c, int s) {
        const int tok = (int)rows.tok0 + (nblk - 1 - c) * 64;  // blocks in reversed order
#pragma unroll
        for (int x = 0; x < Tr::kBoxes; ++x) {
          const int off = x * Tr::kBoxBytes;
          tma_load_4d(tile(s, kTileQ) + off, &tm_q, ring.full(s), x * 64, tok, h, b);
          tma_load_4d(tile(s, kTileK) + off, &tm_k, ring.full(s), x * 64, tok, h, b);
          tma_load_4d(tile(s, kTileV) + off, &tm_v, ring.full(s), x * 64, tok, h, b);
          tma_load_4d(tile(s, kTileDO) + off, &tm_do, ring.full(s), x * 64, tok, h, b);
        }
      });
    }
    return;
  }

  // -------------------------------------------------------------------------- consumers
  regs_alloc<Tr::kConsumerRegs>();
  const int w = wg - 1;                       // its slice of H: columns [64w, 64w + 64) of E
  const int t = tid - 128 * wg;               // thread in the warpgroup
  const int warp = t >> 5, lane = t & 31;
  const int gq = lane >> 2, tq = lane & 3;
  const int own_bar = 1 + w;                  // this warpgroup's named barrier
  const int all_bar = 1 + Tr::kConsumers;     // every consumer's
  constexpr int kAll = 128 * Tr::kConsumers;
  const uint32_t slice = w * Tr::kSliceBytes;  // this consumer's columns of E in an H copy
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of a block
  BlockDecay<true> dec;
  dec.init(nl2, p.scale, r0, tq);

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

  // The consumer's two jobs j = 0, 1 (compile-time gradients G0, G1, run-time column blocks
  // col0, col1), each through its output box: (dV, dK) on the columns [64w, 64w + 64), or with
  // kByGradient one gradient on the columns [0, 64) and [64, 128), its score shared by both.
  auto consume = [&](auto grad0, auto grad1) {
    constexpr int G0 = decltype(grad0)::value, G1 = decltype(grad1)::value;
    constexpr bool kOneScore = G0 == G1;
    using Op0 = BwdOperands<G0>;
    using Op1 = BwdOperands<G1>;
    const int col0 = kOneScore ? 0 : w, col1 = kOneScore ? 1 : w;
    const uint32_t box0 = staging + w * 2 * Tr::kBoxBytes, box1 = box0 + Tr::kBoxBytes;
    // rows of a partial block go out one by one (rows past n may be the next sequence's)
    auto out_rows = [&](auto grad, int blk, int col, const float(&acc)[32], int n) {
      constexpr int G = decltype(grad)::value;
      T* o = G == kGradDV ? rows.at<T>(p.dv, p.dv_bs, p.dv_hs, p.dv_rs)
                          : rows.at<T>(p.dk, p.dk_bs, p.dk_hs, p.dk_rs);
      const int64_t rs = G == kGradDV ? p.dv_rs : p.dk_rs;
      store_rows<T>(o + (int64_t)blk * 64 * rs + 64 * col + 2 * tq, rs, acc, r0, n);
    };

    // Per block c the warpgroup issues job 0's score of block c + 1 before it finishes block
    // c, so that the tensor cores have work while it stores job 1's output and the state copy.
    // The first block processed is the segment's last, the only one that may be partial: dO
    // and Q are the operands whose rows past n (maybe the next packed sequence's) would still
    // meet a 0 · x (in the RS products and the state update), so they are zeroed there first;
    // every consumer reads all of Q and dO (its scores, its P Z), so all of them wait for the
    // zeros.
    float p_acc[32];
    if (nblk > 0) {
      mbar_wait(ring.full(0), 0);
      const int n = si.len - (nblk - 1) * 64;
      if (n < 64) {
        zero_rows(tile(0, kTileQ) + w * Tr::kBoxBytes, n, t);
        zero_rows(tile(0, kTileDO) + w * Tr::kBoxBytes, n, t);
        fence_async_shared();
        named_barrier(all_bar, kAll);
      }
      wgmma_fence();
      issue_qk<T, HD>(p_acc, tile(0, Op0::kX), tile(0, Op0::kY));
      wgmma_commit();
    }
    for (int c = 0; c < nblk; ++c) {
      const int s = c % kStages;     // waited for when job 0's score of the block was issued
      const int blk = nblk - 1 - c;  // the block's place in the segment
      const int n = min(64, si.len - blk * 64);
      const uint32_t hc = copies + (c & 1) * Tr::kCopyBytes;  // H entering the block
      const float row0 = n == 64 ? dec.row[0] : Decay<true>::row(nl2, p.scale, r0, n);
      const float row1 = n == 64 ? dec.row[1] : Decay<true>::row(nl2, p.scale, r1, n);

      // job 0: acc0 = diag(row) X0 H[:, col0] + (X0 Y0ᵀ ⊙ Mᵀ) Z0[:, col0]
      float acc0[32], acc1[32];
      uint32_t pa[4][4];
      wgmma_fence();
      issue_state_product<T, HD, G0>(acc0, tile(s, Op0::kX), hc, col0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(p_acc);
      fence_regs(acc0);
      masked_frags<T, true>(pa, p_acc, dec.mask, warp, tq, r0, n);
#pragma unroll
      for (int i = 0; i < 32; ++i) acc0[i] *= (i & 2) ? row1 : row0;
      const uint32_t uZ0 = tile(s, Op0::kZ) + col0 * Tr::kBoxBytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(acc0, pa[kk], desc_sw128(uZ0 + kk * 2048));
      wgmma_commit();
      // job 1: acc1 = diag(row) X1 H[:, col1] + (X1 Y1ᵀ ⊙ Mᵀ) Z1[:, col1], its score (unless
      // it is job 0's) issued with its state product
      wgmma_fence();
      if constexpr (!kOneScore) issue_qk<T, HD>(p_acc, tile(s, Op1::kX), tile(s, Op1::kY));
      issue_state_product<T, HD, G1>(acc1, tile(s, Op1::kX), hc, col1);
      wgmma_commit();

      // job 0's output while the tensor cores run job 1's products: a full block through its
      // staging box (free once this warpgroup's stores of the previous block have read it) and
      // one TMA store at the end of the block, a partial one row by row
      wgmma_wait<1>();
      fence_regs(acc0);
      if (n == 64) {
        if (t == 0) bulk_wait_all<true>();
        named_barrier(own_bar, 128);
        tile_to_box<T>(box0, acc0, warp, lane);
      } else {
        out_rows(grad0, blk, col0, acc0, n);
      }

      wgmma_wait<0>();
      fence_regs(acc1);
      if constexpr (!kOneScore) {
        fence_regs(p_acc);
        masked_frags<T, true>(pa, p_acc, dec.mask, warp, tq, r0, n);
      }
#pragma unroll
      for (int i = 0; i < 32; ++i) acc1[i] *= (i & 2) ? row1 : row0;
      // H_w = λ^n H_w + Σ_dt (diag(scale λ^{j+1}) Q_dt)ᵀ dO_w; token j's weight, 0 past n
      float wk[4][4], total;
      dec.keys(wk, total, nl2, p.scale, tq, n);
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
        for (int i = 0; i < 32; ++i) h_acc[dt][i] *= total;
      uint32_t qa[Tr::kBoxes][4][4];
      weighted_keys_t<T, Tr::kBoxes>(qa, tile(s, kTileQ), wk, warp, lane, n);
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(h_acc[dt]);
      const uint32_t uZ1 = tile(s, Op1::kZ) + col1 * Tr::kBoxBytes;
      const uint32_t uDOw = tile(s, kTileDO) + w * Tr::kBoxBytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(acc1, pa[kk], desc_sw128(uZ1 + kk * 2048));
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_rs_64x64<T>(h_acc[dt], qa[dt][kk], desc_sw128(uDOw + kk * 2048));
      wgmma_commit();
      const bool next = c + 1 < nblk;
      if (next) {  // job 0's score of block c + 1 runs under this block's epilogue
        const int s1 = (c + 1) % kStages;
        mbar_wait(ring.full(s1), ((c + 1) / kStages) & 1);
        wgmma_fence();
        issue_qk<T, HD>(p_acc, tile(s1, Op0::kX), tile(s1, Op0::kY));
        wgmma_commit();
        wgmma_wait<1>();
      } else {
        wgmma_wait<0>();
      }
      fence_regs(acc1);
#pragma unroll
      for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(h_acc[dt]);

      if (n == 64)
        tile_to_box<T>(box1, acc1, warp, lane);
      else
        out_rows(grad1, blk, col1, acc1, n);
      if (next) state_copy<T>(copies + ((c + 1) & 1) * Tr::kCopyBytes + slice, h_acc, warp, lane);
      fence_async_shared();
      // every consumer is done with stage s and with copy c & 1 (written again after the next
      // block), and copy (c + 1) & 1 is whole
      named_barrier(all_bar, kAll);
      if (t == 0) {
        if (n == 64) {
          const int tok = (int)rows.tok0 + blk * 64;
          tma_store_4d(G0 == kGradDV ? &tm_dv : &tm_dk, box0, 64 * col0, tok, h, (int)rows.batch);
          tma_store_4d(G1 == kGradDV ? &tm_dv : &tm_dk, box1, 64 * col1, tok, h, (int)rows.batch);
          bulk_commit();
        }
        mbar_arrive(ring.empty(s));
      }
      // job 0's score of block c + 1 completes inside the iteration: an accumulator still
      // being written must not cross the loop's back edge (the compiler would copy it there
      // and serialise every wgmma)
      wgmma_wait<0>();
    }
    wgmma_wait<0>();  // (nothing is pending; tells the compiler so for the nblk == 0 path)
  };
  using DV = std::integral_constant<int, kGradDV>;
  using DK = std::integral_constant<int, kGradDK>;
  if constexpr (kByGradient) {
    if (w == 0)
      consume(DV{}, DV{});
    else
      consume(DK{}, DK{});
  } else {
    consume(DV{}, DK{});
  }
  if (t == 0) bulk_wait_all<false>();  // the output stores are done with shared memory

  if (last_seg && p.dstate_out != nullptr)
    store_state_slice<Tr::kBoxes>(p.dstate_out + ((int64_t)si.seq * p.seg.H + h) * HD * HD, h_acc, w,
                                  warp, lane);
#endif
}

template <typename T, int HD>
void run_bwd_sm90(const BwdParams& p, cudaStream_t stream) {
  using Tr = Sm90BwdTraits<T, HD>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  const SegParams& sg = p.seg;
  const CUtensorMap tq = make_tile_map(p.q, kBf16, HD, sg.N, sg.H, sg.B, p.q_rs, p.q_hs, p.q_bs);
  const CUtensorMap tk = make_tile_map(p.k, kBf16, HD, sg.N, sg.H, sg.B, p.k_rs, p.k_hs, p.k_bs);
  const CUtensorMap tv = make_tile_map(p.v, kBf16, HD, sg.N, sg.H, sg.B, p.v_rs, p.v_hs, p.v_bs);
  const CUtensorMap tdo = make_tile_map(p.dout, kBf16, HD, sg.N, sg.H, sg.B, p.do_rs, p.do_hs, p.do_bs);
  const CUtensorMap tdk = make_tile_map(p.dk, kBf16, HD, sg.N, sg.H, sg.B, p.dk_rs, p.dk_hs, p.dk_bs);
  const CUtensorMap tdv = make_tile_map(p.dv, kBf16, HD, sg.N, sg.H, sg.B, p.dv_rs, p.dv_hs, p.dv_bs);
  auto kernel = la_bwd_sm90_kernel<T, HD, false>;
  if constexpr (Tr::kConsumers == 2)
    if (sm90_bwd_by_gradient()) kernel = la_bwd_sm90_kernel<T, HD, true>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmem);
  kernel<<<dim3(sg.num_segs, sg.H), Tr::kThreads, Tr::kSmem, stream>>>(tq, tk, tv, tdo, tdk, tdv, p);
}

}  // namespace la
