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
// The warpgroups never wait for each other: each keeps its own copy of its state slice
// (double-buffered) and releases a stage of the ring when it is done with it.
#pragma once

#include "la_common.cuh"
#include "la_params.h"
#include "la_sm90.cuh"

namespace la {

template <typename T, int HD>
struct Sm90FwdTraits {
  static_assert(HD == 64 || HD == 128, "specialised head dims");
  static constexpr int kBlock = 64;
  static constexpr int kConsumers = HD / 64;               // consumer warpgroups
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kMinBlocksPerSM = HD == 64 ? 2 : 1;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = HD == 64 ? 232 : 240;
  static constexpr int kStages = 3;
  static constexpr int kBoxBytes = 64 * 64 * 2;            // (64 rows, 64 columns), 16-bit
  static constexpr int kBoxes = HD / 64;                   // boxes per (64, HD) tile
  static constexpr int kTileBytes = kBoxes * kBoxBytes;
  static constexpr int kStageBytes = 3 * kTileBytes;       // Q, K, V
  static constexpr int kStateCopyBytes = HD * 64 * 2;      // (HD, 64) 16-bit, MN-major
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  // 1 KiB of slack: the swizzled boxes need 1 KiB alignment, the dynamic base has less
  static constexpr int kSmem = kStages * kStageBytes +
                               kConsumers * (2 * kStateCopyBytes + kBoxBytes) + kBarrierBytes + 1024;
};

namespace sm90 {

// Byte offset of element (row, col) of a (rows, 64) 16-bit box under the 128-byte swizzle.
__device__ __forceinline__ uint32_t sw128(int row, int col) {
  return row * 128 + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2;
}

__device__ __forceinline__ void stsm_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                        uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3));
}

// A 64 × 64 fp32 accumulator tile as a 16-bit (64 rows, 64 columns) swizzled box: the
// state copy (an MN-major operand, rows d) or the output staging (rows = tokens). One
// stmatrix stores the 8 × 8 blocks (rows +0/+8) × (columns 8j, 8j + 8) of a warp's 16 rows.
template <typename T>
__device__ __forceinline__ void tile_to_box(uint32_t dst, const float (&a)[32], int warp, int lane) {
  using P2 = Pack2<T>;
  const int mat = lane >> 3, r = lane & 7;
  const uint32_t row = dst + (warp * 16 + (mat & 1) * 8 + r) * 128;
#pragma unroll
  for (int j = 0; j < 8; j += 2) {
    const int jj = j + (mat >> 1);  // the 8-column block this lane addresses
    stsm_x4(row + ((jj ^ r) << 4), P2::pack(a[4 * j], a[4 * j + 1]), P2::pack(a[4 * j + 2], a[4 * j + 3]),
            P2::pack(a[4 * j + 4], a[4 * j + 5]), P2::pack(a[4 * j + 6], a[4 * j + 7]));
  }
}
// The state slice (HD × 64, tile dt = rows [64dt, 64dt + 64)) as boxes stacked along d.
template <typename T, int kTiles>
__device__ __forceinline__ void state_copy(uint32_t dst, const float (&s)[kTiles][32], int warp,
                                           int lane) {
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt) tile_to_box<T>(dst + dt * 8192, s[dt], warp, lane);
}

// Calls f(dt, i, d, e) for accumulator register s[dt][i] of the state slice: row d of S,
// column e of the slice (0..63).
template <int kTiles, typename F>
__device__ __forceinline__ void for_each_state(int warp, int lane, F&& f) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 32; ++i)
      f(dt, i, dt * 64 + warp * 16 + gq + ((i & 2) ? 8 : 0), 8 * (i >> 2) + 2 * tq + (i & 1));
}

// This consumer's slice (columns [64w, 64w + 64) of E) of a D × E fp32 state whose element
// (d, e) is src[d·sd + e·se]; zeros without src.
template <int kTiles>
__device__ __forceinline__ void load_state_slice(float (&s)[kTiles][32], const float* src, int64_t sd,
                                                 int64_t se, int w, int warp, int lane) {
  for_each_state<kTiles>(warp, lane, [&](int dt, int i, int d, int e) {
    s[dt][i] = src ? src[d * sd + (64 * w + e) * se] : 0.f;
  });
}
// The slice into a row-major (kTiles·64) × (kTiles·64) fp32 state.
template <int kTiles>
__device__ __forceinline__ void store_state_slice(float* dst, const float (&s)[kTiles][32], int w,
                                                  int warp, int lane) {
  for_each_state<kTiles>(warp, lane, [&](int dt, int i, int d, int e) {
    dst[d * (kTiles * 64) + 64 * w + e] = s[dt][i];
  });
}

// The decay factors of a block of n tokens (every exponent a distance inside the block, 0..64):
//   forward: P element (row r, key j <= r) scale·λ^{r−j}, output row scale·λ^{r+1}, key
//            weight of the state update λ^{n−1−j}
//   reverse: P element (j >= r) scale·λ^{j−r}, output row λ^{n−1−r}, key weight scale·λ^{j+1}
// Keys j >= n weigh 0 (rows of the next packed sequence).
template <bool kReverse>
struct Decay {
  static __device__ __forceinline__ float mask(float nl2, float scale, int r, int j) {
    return scale * decay_pow(nl2, (float)max(kReverse ? j - r : r - j, 0));
  }
  static __device__ __forceinline__ float row(float nl2, float scale, int r, int n) {
    return kReverse ? decay_pow(nl2, (float)max(n - 1 - r, 0)) : scale * decay_pow(nl2, (float)(r + 1));
  }
  static __device__ __forceinline__ float key(float nl2, float scale, int j, int n) {
    if (j >= n) return 0.f;
    return kReverse ? scale * decay_pow(nl2, (float)(j + 1)) : decay_pow(nl2, (float)(n - 1 - j));
  }
};

// The factors of a full 64-token block for one consumer thread (lane quad position tq, rows
// r0 and r0 + 8), computed once per CTA: mask[4m + i] for its P element at row r0 (+8 for
// i & 2) and key 8m + 2tq + (i & 1); wk[kk][x] for its Kᵀ fragment elements, keys
// 16kk + 2tq + (x & 1) (+8 for x & 2); row[2] for its two output rows; total = λ^64.
template <bool kReverse>
struct BlockDecay {
  using F = Decay<kReverse>;
  float mask[32];
  float wk[4][4];
  float row[2];
  float total;
  __device__ __forceinline__ void init(float nl2, float scale, int r0, int tq) {
#pragma unroll
    for (int e = 0; e < 32; ++e)
      mask[e] = F::mask(nl2, scale, r0 + ((e & 2) ? 8 : 0), 8 * (e >> 2) + 2 * tq + (e & 1));
    set_block(nl2, scale, r0, tq, 64);
  }
  // the factors that depend on the block's length (a segment's last block may be partial)
  __device__ __forceinline__ void set_block(float nl2, float scale, int r0, int tq, int n) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int x = 0; x < 4; ++x)
        wk[kk][x] = F::key(nl2, scale, 16 * kk + 2 * tq + (x & 1) + ((x & 2) ? 8 : 0), n);
    row[0] = F::row(nl2, scale, r0, n);
    row[1] = F::row(nl2, scale, r0 + 8, n);
    total = decay_pow(nl2, (float)n);
  }
  // the state update's key weights and λ^n for a block of n tokens: the stored ones for a
  // full block, computed for a partial one (a segment's last block)
  __device__ __forceinline__ void keys(float (&w)[4][4], float& tot, float nl2, float scale, int tq,
                                       int n) const {
    const bool full = n == 64;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int x = 0; x < 4; ++x) w[kk][x] = wk[kk][x];
    tot = total;
    if (!full) {
      tot = decay_pow(nl2, (float)n);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int x = 0; x < 4; ++x)
          w[kk][x] = F::key(nl2, scale, 16 * kk + 2 * tq + (x & 1) + ((x & 2) ? 8 : 0), n);
    }
  }
};

// P = Q Kᵀ (64 × 64, k over HD): Q and K as K-major operands, box kk/4, k offset kk%4. K's
// 64-column boxes are kBoxStrideK bytes apart (a (64, HD) tile: 8 KiB; the backward's H copy
// read as Hᵀ: one consumer slice).
template <typename T, int HD, int kBoxStrideK = 8192>
__device__ __forceinline__ void issue_qk(float (&acc)[32], uint32_t uQ, uint32_t uK) {
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const uint32_t off = (kk & 3) * 32;
    wgmma_ss_64x64<T, false>(acc, desc_sw128(uQ + (kk >> 2) * 8192 + off),
                             desc_sw128(uK + (kk >> 2) * kBoxStrideK + off), kk > 0);
  }
}
// O = Q S_w (64 × 64, k over HD): S_w's copy as an MN-major operand, 16 rows per k step.
template <typename T, int HD>
__device__ __forceinline__ void issue_qs(float (&acc)[32], uint32_t uQ, uint32_t uS) {
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const uint32_t off = (kk >> 2) * 8192 + (kk & 3) * 32;
    wgmma_ss_64x64<T, true>(acc, desc_sw128(uQ + off), desc_sw128(uS + kk * 2048), kk > 0);
  }
}

// P ⊙ M (the factors `mask`, scale included) of a block of n tokens as the A fragments of the
// four 16-key steps, for the thread at rows r0, r0 + 8 and quad position tq of warp `warp`. Key
// j = 8m + 2tq + x is kept where j <= row (kReverse: j >= row) and j < n, i.e.
// lo <= 8m + x < hi[row half]; key groups wholly on the masked side of the warp's rows are
// skipped (warp-uniform). Masked elements are selected away, never multiplied (they may be
// products of another packed sequence's rows).
template <typename T, bool kReverse>
__device__ __forceinline__ void masked_frags(uint32_t (&pa)[4][4], const float (&p)[32],
                                             const float (&mask)[32], int warp, int tq, int r0,
                                             int n) {
  using P2 = Pack2<T>;
  const int r1 = r0 + 8;
  const int lo[2] = {kReverse ? r0 - 2 * tq : 0, kReverse ? r1 - 2 * tq : 0};
  const int hi[2] = {(kReverse ? n : min(r0 + 1, n)) - 2 * tq,
                     (kReverse ? n : min(r1 + 1, n)) - 2 * tq};
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int m = 2 * kk + (e >> 2), i = e & 3, jm = 8 * m + (i & 1);
      const bool group = kReverse ? m >= 2 * warp : m <= 2 * warp + 1;
      v[e] = (group && jm >= lo[i >> 1] && jm < hi[i >> 1]) ? p[4 * m + i] * mask[4 * m + i] : 0.f;
    }
    pa[kk][0] = P2::pack(v[0], v[1]);
    pa[kk][1] = P2::pack(v[2], v[3]);
    pa[kk][2] = P2::pack(v[4], v[5]);
    pa[kk][3] = P2::pack(v[6], v[7]);
  }
}

// (diag(wk) K)ᵀ as the A fragments of the state update: rows d = 64dt + 16·warp + (0..15) of
// Kᵀ, keys 16kk.. (ldmatrix.trans of the K tile's rows), key weights wk[kk][x] (keys
// 16kk + 2tq + (x & 1) (+8 for x & 2)). In a partial block of n tokens the keys from n on
// are selected away, never multiplied (rows of the next packed sequence, maybe not finite);
// not by their weight's sign: a negative scale makes the reversed weights negative.
template <typename T, int kTiles>
__device__ __forceinline__ void weighted_keys_t(uint32_t (&ka)[kTiles][4][4], uint32_t uK,
                                                const float (&wk)[4][4], int warp, int lane, int n) {
  using P2 = Pack2<T>;
  const int mat = lane >> 3, tq = lane & 3;
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const int key = kk * 16 + (lane & 7) + ((mat & 2) ? 8 : 0);
      const int col = warp * 16 + ((mat & 1) ? 8 : 0);
      ldsm_x4_t(ka[dt][kk], uK + dt * 8192 + sw128(key, col));
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float2 f = P2::unpack(ka[dt][kk][x]);
        const float w0 = wk[kk][(x & 2)], w1 = wk[kk][(x & 2) + 1];
        const int key0 = 16 * kk + 2 * tq + ((x & 2) ? 8 : 0);
        ka[dt][kk][x] = n == 64 ? P2::pack(f.x * w0, f.y * w1)
                                : P2::pack(key0 < n ? f.x * w0 : 0.f, key0 + 1 < n ? f.y * w1 : 0.f);
      }
    }
}

// Rows n.. of a (64, 64) 16-bit box set to zero by the 128 threads of a warpgroup (rows past a
// sequence's end may hold the next packed sequence, finite or not, and must not meet a 0 · x).
__device__ __forceinline__ void zero_rows(uint32_t box, int n, int t) {
  for (int i = n * 8 + t; i < 64 * 8; i += 128)
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(box + i * 16), "r"(0));
}

// Rows r0 and r0 + 8, those below n, of a 64 × 64 accumulator tile to global memory; `g` is
// row 0 of the block at this thread's first column (2·tq) of the tile, rows `rs` apart.
template <typename T>
__device__ __forceinline__ void store_rows(T* g, int64_t rs, const float (&a)[32], int r0, int n) {
  using P2 = Pack2<T>;
  T* row0 = g + (int64_t)r0 * rs;
  T* row1 = g + (int64_t)(r0 + 8) * rs;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (r0 < n) *reinterpret_cast<uint32_t*>(row0 + 8 * j) = P2::pack(a[4 * j], a[4 * j + 1]);
    if (r0 + 8 < n) *reinterpret_cast<uint32_t*>(row1 + 8 * j) = P2::pack(a[4 * j + 2], a[4 * j + 3]);
  }
}

}  // namespace sm90

template <typename T, int HD, bool kReverse>
__global__ void __launch_bounds__(Sm90FwdTraits<T, HD>::kThreads,
                                  Sm90FwdTraits<T, HD>::kMinBlocksPerSM)
    la_fwd_sm90_kernel(const __grid_constant__ CUtensorMap tm_q,
                       const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v,
                       const __grid_constant__ CUtensorMap tm_o, const FwdParams p) {
#ifdef LA_SM90_ENABLED
  using namespace sm90;
  using Tr = Sm90FwdTraits<T, HD>;
  constexpr int kStages = Tr::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const int g = blockIdx.x, h = blockIdx.y;
  const SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  // segments in processing order: the first takes the incoming state, the last gives the
  // outgoing one
  const bool first_seg = kReverse ? si.seg == si.nseg - 1 : si.seg == 0;
  const bool last_seg = kReverse ? si.seg == 0 : si.seg == si.nseg - 1;

  // smem: [stage][Q K V][box] | [consumer][2 buffers] state copies | [consumer] output box |
  // full[], empty[] barriers
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t states = base + kStages * Tr::kStageBytes;
  const uint32_t staging = states + Tr::kConsumers * 2 * Tr::kStateCopyBytes;
  const uint32_t bars = staging + Tr::kConsumers * Tr::kBoxBytes;
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
      const int b = (int)rows.batch;
      ring.produce(nblk, 3 * Tr::kTileBytes, [&](int c, int s) {
        const int tok = (int)rows.tok0 + (kReverse ? nblk - 1 - c : c) * 64;
#pragma unroll
        for (int x = 0; x < Tr::kBoxes; ++x) {
          tma_load_4d(tile(s, 0) + x * Tr::kBoxBytes, &tm_q, ring.full(s), x * 64, tok, h, b);
          tma_load_4d(tile(s, 1) + x * Tr::kBoxBytes, &tm_k, ring.full(s), x * 64, tok, h, b);
          tma_load_4d(tile(s, 2) + x * Tr::kBoxBytes, &tm_v, ring.full(s), x * 64, tok, h, b);
        }
      });
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
  const uint32_t copy0 = states + w * 2 * Tr::kStateCopyBytes;
  const uint32_t out_box = staging + w * Tr::kBoxBytes;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of a block
  BlockDecay<kReverse> dec;
  dec.init(nl2, p.scale, r0, tq);

  // incoming state of the segment: the scan's state (segments after the first, and the first
  // too with slots: the scan copied the pool row, which this sequence's last segment
  // overwrites), the initial state, or 0
  float s_acc[Tr::kBoxes][32];
  {
    const float* src = nullptr;
    int64_t sd = HD, se = 1;
    if (!first_seg || (si.nseg > 1 && p.state_rows.slots != nullptr)) {
      src = p.ws + ((int64_t)g * p.seg.H + h) * HD * HD;
    } else if (p.state_in != nullptr) {
      const int64_t row = state_in_row(p.state_rows, si.seq);
      src = row >= 0 ? p.state_in + (row * p.seg.H + h) * HD * HD : nullptr;
      sd = p.state_in_sd;
      se = p.state_in_se;
    }
    load_state_slice<Tr::kBoxes>(s_acc, src, sd, se, w, warp, lane);
  }
  state_copy<T>(copy0, s_acc, warp, lane);
  fence_async_shared();
  named_barrier(bar_id, 128);

  // Per block c the warpgroup issues P(c + 1) before it finishes block c, so that the tensor
  // cores have work while it stores outputs and the state copy.
  float p_acc[32];
  if (nblk > 0) {
    mbar_wait(ring.full(0), 0);
    wgmma_fence();
    issue_qk<T, HD>(p_acc, tile(0, 0), tile(0, 1));
    wgmma_commit();
  }
  for (int c = 0; c < nblk; ++c) {
    const int s = c % kStages;
    const int blk = kReverse ? nblk - 1 - c : c;  // the block's place in the segment
    const int n = min(64, si.len - blk * 64);
    const uint32_t uQ = tile(s, 0), uK = tile(s, 1), uV = tile(s, 2) + w * Tr::kBoxBytes;
    if (n < 64) {
      // rows past the sequence's end may hold the next packed sequence (finite or not):
      // zero them in V, the one operand whose masked rows would still meet a 0 · x
      zero_rows(uV, n, t);
      fence_async_shared();
      named_barrier(bar_id, 128);
    }

    float o_acc[32];
    // O = Q S_w from the copy of the state entering the block
    wgmma_fence();
    issue_qs<T, HD>(o_acc, uQ, copy0 + (c & 1) * Tr::kStateCopyBytes);
    wgmma_commit();
    wgmma_wait<1>();
    fence_regs(p_acc);
    uint32_t pa[4][4];
    masked_frags<T, kReverse>(pa, p_acc, dec.mask, warp, tq, r0, n);
    wgmma_wait<0>();
    fence_regs(o_acc);
    const float row0 = n == 64 ? dec.row[0] : Decay<kReverse>::row(nl2, p.scale, r0, n);
    const float row1 = n == 64 ? dec.row[1] : Decay<kReverse>::row(nl2, p.scale, r1, n);
#pragma unroll
    for (int i = 0; i < 32; ++i) o_acc[i] *= (i & 2) ? row1 : row0;
    // O += P V_w
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(o_acc, pa[kk], desc_sw128(uV + kk * 2048));
    wgmma_commit();

    // S_w = λ^n S_w + Σ_dt (diag(λ^{n-1-j}) K_dt)ᵀ V_w; token j's weight, 0 past n
    float wk[4][4], total;
    dec.keys(wk, total, nl2, p.scale, tq, n);
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
      for (int i = 0; i < 32; ++i) s_acc[dt][i] *= total;
    uint32_t ka[Tr::kBoxes][4][4];
    weighted_keys_t<T, Tr::kBoxes>(ka, uK, wk, warp, lane, n);
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(s_acc[dt]);
    wgmma_fence();
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_rs_64x64<T>(s_acc[dt], ka[dt][kk], desc_sw128(uV + kk * 2048));
    wgmma_commit();

    const bool next = c + 1 < nblk;
    if (next) {  // P(c + 1) runs under this block's epilogue
      const int s1 = (c + 1) % kStages;
      mbar_wait(ring.full(s1), ((c + 1) / kStages) & 1);
      wgmma_fence();
      issue_qk<T, HD>(p_acc, tile(s1, 0), tile(s1, 1));
      wgmma_commit();
      wgmma_wait<1>();
    } else {
      wgmma_wait<0>();
    }
#pragma unroll
    for (int dt = 0; dt < Tr::kBoxes; ++dt) fence_regs(s_acc[dt]);
    fence_regs(o_acc);
    // outputs (scale already applied): a full block through the staging box and one TMA
    // store; a partial one (its rows past n may be the next sequence's) row by row
    if (n == 64) {
      if (t == 0) bulk_wait_all<true>();  // the previous block's store has read the box
      named_barrier(bar_id, 128);
      tile_to_box<T>(out_box, o_acc, warp, lane);
    } else {
      store_rows<T>(rows.at<T>(p.o, p.o_bs, p.o_hs, p.o_rs) + (int64_t)blk * 64 * p.o_rs + 64 * w + 2 * tq,
                    p.o_rs, o_acc, r0, n);
    }
    if (next) state_copy<T>(copy0 + ((c + 1) & 1) * Tr::kStateCopyBytes, s_acc, warp, lane);
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

template <typename T, int HD>
void run_fwd_sm90(const FwdParams& p, bool pass1, bool reverse, cudaStream_t stream) {
  if (pass1) return run_state_sm90<T, HD>(p, reverse, stream);
  using Tr = Sm90FwdTraits<T, HD>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  const CUtensorMap tq = make_tile_map(p.q, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.q_rs, p.q_hs, p.q_bs);
  const CUtensorMap tk = make_tile_map(p.k, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.k_rs, p.k_hs, p.k_bs);
  const CUtensorMap tv = make_tile_map(p.v, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.v_rs, p.v_hs, p.v_bs);
  const CUtensorMap to = make_tile_map(p.o, kBf16, HD, p.seg.N, p.seg.H, p.seg.B, p.o_rs, p.o_hs, p.o_bs);
  auto kernel = reverse ? la_fwd_sm90_kernel<T, HD, true> : la_fwd_sm90_kernel<T, HD, false>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmem);
  kernel<<<dim3(p.seg.num_segs, p.seg.H), Tr::kThreads, Tr::kSmem, stream>>>(tq, tk, tv, to, p);
}

}  // namespace la
