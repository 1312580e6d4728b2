// Per-block building blocks of the sm_90a kernels (the forward and the dq sweep,
// la_fwd_sm90.cuh; pass 1, la_state_sm90.cuh; the fused dk/dv sweep, la_bwd_sm90.cuh): swizzled
// 16-bit boxes and the fp32 state slices, the decay factors of a block, the products' issue
// (Q Kᵀ, Q S), P's masked fragments, weighted keys and the state update's operands, row stores.
#pragma once

#include "la_common.cuh"
#include "la_params.h"
#include "la_sm90.cuh"

namespace la {
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

// A 64 × 64 tile as a 16-bit (64 rows, 64 columns) box under the 128-byte swizzle, this
// thread's 32 elements as 16-bit pairs in the accumulator order: word(kk, i) holds elements
// 8kk + 2i and 8kk + 2i + 1. One stmatrix stores the 8 × 8 blocks (rows +0/+8) × (columns
// 16kk, 16kk + 8) of a warp's 16 rows.
template <typename Word>
__device__ __forceinline__ void words_to_box(uint32_t dst, Word&& word, int warp, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  const uint32_t row = dst + (warp * 16 + (mat & 1) * 8 + r) * 128;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int jj = 2 * kk + (mat >> 1);  // the 8-column block this lane addresses
    stsm_x4(row + ((jj ^ r) << 4), word(kk, 0), word(kk, 1), word(kk, 2), word(kk, 3));
  }
}
// A 64 × 64 fp32 accumulator tile as a 16-bit box: the state copy (an MN-major operand, rows
// d) or the output staging (rows = tokens).
template <typename T>
__device__ __forceinline__ void tile_to_box(uint32_t dst, const float (&a)[32], int warp, int lane) {
  words_to_box(
      dst, [&](int kk, int i) { return Pack2<T>::pack(a[8 * kk + 2 * i], a[8 * kk + 2 * i + 1]); },
      warp, lane);
}
// The state slice (HD × 64, tile dt = rows [64dt, 64dt + 64)) as boxes stacked along d.
template <typename T, int kTiles>
__device__ __forceinline__ void state_copy(uint32_t dst, const float (&s)[kTiles][32], int warp,
                                           int lane) {
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt) tile_to_box<T>(dst + dt * 8192, s[dt], warp, lane);
}
// What state_copy's rounding leaves out, S − S̃, itself in 16 bits, laid out as state_copy's:
// Q S̃ + Q (S − S̃) is Q S to about 2^-16 of S.
template <typename T, int kTiles>
__device__ __forceinline__ void state_residual_copy(uint32_t dst, const float (&s)[kTiles][32],
                                                    int warp, int lane) {
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
    words_to_box(
        dst + dt * 8192,
        [&](int kk, int i) {
          uint32_t lo;
          split_pair<T>(s[dt][8 * kk + 2 * i], s[dt][8 * kk + 2 * i + 1], lo);
          return lo;
        },
        warp, lane);
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
    init_mask(nl2, scale, r0, tq);
    set_block(nl2, scale, r0, tq, 64);
  }
  __device__ __forceinline__ void init_mask(float nl2, float scale, int r0, int tq) {
#pragma unroll
    for (int e = 0; e < 32; ++e)
      mask[e] = F::mask(nl2, scale, r0 + ((e & 2) ? 8 : 0), 8 * (e >> 2) + 2 * tq + (e & 1));
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
  // λ^n for a block of n tokens: the stored one for a full block, computed for a partial one
  __device__ __forceinline__ float block_total(float nl2, int n) const {
    return n == 64 ? total : decay_pow(nl2, (float)n);
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
    tot = block_total(nl2, n);
    if (!full) {
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
// read as Hᵀ: one consumer slice). kDescAdd: each step's descriptors by desc_add from the
// operands' first ones.
template <typename T, int HD, int kBoxStrideK = 8192, bool kDescAdd = false>
__device__ __forceinline__ void issue_qk(float (&acc)[32], uint32_t uQ, uint32_t uK) {
  const uint64_t dQ = desc_sw128(uQ), dK = desc_sw128(uK);
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const uint32_t oQ = (kk >> 2) * 8192 + (kk & 3) * 32;
    const uint32_t oK = (kk >> 2) * kBoxStrideK + (kk & 3) * 32;
    wgmma_ss_64x64<T, false>(acc, kDescAdd ? desc_add(dQ, oQ) : desc_sw128(uQ + oQ),
                             kDescAdd ? desc_add(dK, oK) : desc_sw128(uK + oK), kk > 0);
  }
}
// O = Q S_w (64 × 64, k over HD): S_w's copy as an MN-major operand, 16 rows per k step;
// kDescAdd as in issue_qk; kAccumulate: O += Q S_w.
template <typename T, int HD, bool kDescAdd = false, bool kAccumulate = false>
__device__ __forceinline__ void issue_qs(float (&acc)[32], uint32_t uQ, uint32_t uS) {
  const uint64_t dQ = desc_sw128(uQ), dS = desc_sw128(uS);
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const uint32_t oQ = (kk >> 2) * 8192 + (kk & 3) * 32, oS = kk * 2048;
    wgmma_ss_64x64<T, true>(acc, kDescAdd ? desc_add(dQ, oQ) : desc_sw128(uQ + oQ),
                            kDescAdd ? desc_add(dS, oS) : desc_sw128(uS + oS), kAccumulate || kk > 0);
  }
}

// P ⊙ M (the factors `mask`, scale included) of a block of n tokens as the A fragments of the
// four 16-key steps, for the thread at rows r0, r0 + 8 and quad position tq of warp `warp`. Key
// j = 8m + 2tq + x is kept where j <= row (kReverse: j >= row) and j < n, i.e.
// lo <= 8m + x < hi[row half]; key groups wholly on the masked side of the warp's rows are
// skipped (warp-uniform). Masked elements are selected away, never multiplied (they may be
// products of another packed sequence's rows). kept(x, v) sees each kept element, accumulator
// index x, value v (the d slope pairs).
struct NoKept {
  __device__ __forceinline__ void operator()(int, float) const {}
};
template <typename T, bool kReverse, typename Kept = NoKept>
__device__ __forceinline__ void masked_frags(uint32_t (&pa)[4][4], const float (&p)[32],
                                             const float (&mask)[32], int warp, int tq, int r0,
                                             int n, Kept&& kept = {}) {
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
      const bool keep = group && jm >= lo[i >> 1] && jm < hi[i >> 1];
      v[e] = keep ? p[4 * m + i] * mask[4 * m + i] : 0.f;
      if (keep) kept(4 * m + i, v[e]);
    }
    pa[kk][0] = P2::pack(v[0], v[1]);
    pa[kk][1] = P2::pack(v[2], v[3]);
    pa[kk][2] = P2::pack(v[4], v[5]);
    pa[kk][3] = P2::pack(v[6], v[7]);
  }
}

// Fragment (dt, kk) of Kᵀ as an A operand, by ldmatrix.trans of the K tile at uK: rows
// d = 64dt + 16·warp + (0..15), keys 16kk + (0..15).
__device__ __forceinline__ void load_keys_t(uint32_t (&f)[4], uint32_t uK, int dt, int kk, int warp,
                                            int lane) {
  const int mat = lane >> 3;
  const int key = kk * 16 + (lane & 7) + ((mat & 2) ? 8 : 0);
  const int col = warp * 16 + ((mat & 1) ? 8 : 0);
  ldsm_x4_t(f, uK + dt * 8192 + sw128(key, col));
}

// (diag(wk) K)ᵀ as the A fragments of the state update: rows d = 64dt + 16·warp + (0..15) of
// Kᵀ, keys 16kk.. (ldmatrix.trans of the K tile's rows), key weights wk[kk][x] (keys
// 16kk + 2tq + (x & 1) (+8 for x & 2)). In a partial block of n tokens the keys from n on
// are selected away, never multiplied (rows of the next packed sequence, maybe not finite);
// not by their weight's sign: a negative scale makes the reversed weights negative.
// kSplit (the d slope terms' operands): the weighted keys as two 16-bit parts, ka and the
// remainder lo, two products (see state_update in la_common.cuh).
template <typename T, int kTiles, bool kSplit = false>
__device__ __forceinline__ void weighted_keys_t(uint32_t (&ka)[kTiles][4][4], uint32_t uK,
                                                const float (&wk)[4][4], int warp, int lane, int n,
                                                uint32_t (*lo)[4][4] = nullptr) {
  using P2 = Pack2<T>;
  const int tq = lane & 3;
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      load_keys_t(ka[dt][kk], uK, dt, kk, warp, lane);
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float2 f = P2::unpack(ka[dt][kk][x]);
        const float w0 = wk[kk][(x & 2)], w1 = wk[kk][(x & 2) + 1];
        const int key0 = 16 * kk + 2 * tq + ((x & 2) ? 8 : 0);
        if constexpr (kSplit) {
          const float x0 = n == 64 || key0 < n ? f.x * w0 : 0.f;
          const float x1 = n == 64 || key0 + 1 < n ? f.y * w1 : 0.f;
          ka[dt][kk][x] = split_pair<T>(x0, x1, lo[dt][kk][x]);
        } else {
          ka[dt][kk][x] = n == 64
                              ? P2::pack(f.x * w0, f.y * w1)
                              : P2::pack(key0 < n ? f.x * w0 : 0.f, key0 + 1 < n ? f.y * w1 : 0.f);
        }
      }
    }
}

// The operands of a block's state update acc = λ^n acc + (diag(w) K)ᵀ X (the forward's S with
// K, V; the backward's H with Q, dO): acc decayed by λ^n and the weighted keys at uK as the A
// fragments `ka`; the caller issues the products.
template <typename T, int kTiles, bool kReverse>
__device__ __forceinline__ void state_update_operands(float (&acc)[kTiles][32],
                                                      uint32_t (&ka)[kTiles][4][4],
                                                      const BlockDecay<kReverse>& dec, float nl2,
                                                      float scale, uint32_t uK, int warp,
                                                      int lane, int n) {
  float wk[4][4], total;
  dec.keys(wk, total, nl2, scale, lane & 3, n);
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[dt][i] *= total;
  weighted_keys_t<T, kTiles>(ka, uK, wk, warp, lane, n);
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt) fence_regs(acc[dt]);
}

// The state update's products acc[dt] += ka[dt] · B (RS, the A fragments of
// state_update_operands or weighted_b_operands, B the (64 tokens, 64) box at uB), not
// committed: the caller fences before and commits after (with other products of the group).
template <typename T, int kTiles>
__device__ __forceinline__ void issue_state_products(float (&acc)[kTiles][32],
                                                     const uint32_t (&ka)[kTiles][4][4],
                                                     uint32_t uB) {
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_64x64<T>(acc[dt], ka[dt][kk], desc_sw128(uB + kk * 2048));
}

// Kᵀ, unweighted, as the A fragments of the state update with the key weights on V (the
// layout of weighted_keys_t's, keys 16kk + 2tq + (x & 1) (+8 for x & 2) in the low and high
// halves of ka[dt][kk][x]). In a partial block the keys from n on are set to zero by a mask
// (rows of the next packed sequence, maybe not finite, must not meet the zero rows of
// diag(w) V): one branch around the masks, after all the loads (a compare per pair of keys
// would become a branch around each, each ldmatrix result used right after its load; this
// leaves the loads back to back and a full block's path without the masks).
template <int kTiles>
__device__ __forceinline__ void keys_t(uint32_t (&ka)[kTiles][4][4], uint32_t uK, int warp, int lane,
                                       int n) {
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) load_keys_t(ka[dt][kk], uK, dt, kk, warp, lane);
  if (n < 64) {
    const int m = n - 2 * (lane & 3);  // key 2tq + o keeps where o < m
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int o = 16 * kk + 8 * h;
        const uint32_t keep = (o < m ? 0x0000ffffu : 0u) | (o + 1 < m ? 0xffff0000u : 0u);
#pragma unroll
        for (int dt = 0; dt < kTiles; ++dt) {
          ka[dt][kk][2 * h] &= keep;
          ka[dt][kk][2 * h + 1] &= keep;
        }
      }
  }
}

// The key weights Decay::key of the rows that weighted_rows gives thread t (tokens t / 8 + 16q)
// in a block of n tokens.
template <bool kReverse>
__device__ __forceinline__ void row_key_weights(float (&w)[4], float nl2, float scale, int t, int n) {
#pragma unroll
  for (int q = 0; q < 4; ++q) w[q] = Decay<kReverse>::key(nl2, scale, (t >> 3) + 16 * q, n);
}

// diag(w) X of a (64 tokens, 64) 16-bit box at `src` into the box at `dst`, by the 128 threads
// of a warpgroup. The 128-byte swizzle moves 16-byte chunks only within their row, so each
// chunk keeps its offset and `dst` has `src`'s layout (its operand descriptors are `src`'s
// with another base): thread t takes the chunks t + 128q (q < 4), 8 columns of token row
// t / 8 + 16q, weight w[q], in fp32.
// kShiftUnpack: bf16 unpacked by moving its halves into the high bits (exact, as
// __bfloat1622float2, in two instructions instead of three; the lean dk/dv kernel's).
template <typename T, bool kShiftUnpack = false>
__device__ __forceinline__ void weighted_rows(uint32_t dst, uint32_t src, const float (&w)[4], int t) {
  using P2 = Pack2<T>;
  uint32_t x[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(x[q][0]), "=r"(x[q][1]), "=r"(x[q][2]), "=r"(x[q][3])
                 : "r"(src + (t + 128 * q) * 16));
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t u = x[q][i];
      const float2 f = kShiftUnpack && std::is_same_v<T, __nv_bfloat16>
                           ? make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u))
                           : P2::unpack(u);
      x[q][i] = P2::pack(f.x * w[q], f.y * w[q]);
    }
#pragma unroll
  for (int q = 0; q < 4; ++q)
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + (t + 128 * q) * 16),
                 "r"(x[q][0]), "r"(x[q][1]), "r"(x[q][2]), "r"(x[q][3]));
}

// The operands of a block's state update with the key weights on the B operand (the
// forward's S with K, V_w: kWeightV; the backward's H with Q, dO_w: la_bwd_sm90.cuh),
//   acc = λ^n acc + Kᵀ (diag(w) X_w),   w_j = Decay::key (0 from n on):
// acc decayed by λ^n, diag(w) X_w of the box at uX into the box at uW (X_w's layout, so that
// the products take X's B descriptors with uW as base), the unweighted Kᵀ fragments `ka` (keys
// from n on zero). X_w's rows from n on are zero already (zero_rows), and weigh 0. Ends with
// the warpgroup's barrier (named barrier `bar`): the box is complete for the wgmma when it
// returns. This form takes the weights `w` of this thread's rows (t / 8 + 16q) as given (the
// lean dk/dv kernel computes a full block's once) and kShiftUnpack of weighted_rows.
template <typename T, int kTiles, bool kReverse, bool kShiftUnpack = false>
__device__ __forceinline__ void weighted_b_operands(float (&acc)[kTiles][32],
                                                    uint32_t (&ka)[kTiles][4][4],
                                                    const BlockDecay<kReverse>& dec,
                                                    const float (&w)[4], float nl2, uint32_t uK,
                                                    uint32_t uX, uint32_t uW, int t, int bar,
                                                    int n) {
  weighted_rows<T, kShiftUnpack>(uW, uX, w, t);
  fence_async_shared();
  const float total = dec.block_total(nl2, n);
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[dt][i] *= total;
  keys_t(ka, uK, (t >> 5), t & 31, n);
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt) fence_regs(acc[dt]);
  named_barrier(bar, 128);
}
// The same with w_j = Decay::key (0 from n on).
template <typename T, int kTiles, bool kReverse>
__device__ __forceinline__ void weighted_b_operands(float (&acc)[kTiles][32],
                                                    uint32_t (&ka)[kTiles][4][4],
                                                    const BlockDecay<kReverse>& dec, float nl2,
                                                    float scale, uint32_t uK, uint32_t uX,
                                                    uint32_t uW, int t, int bar, int n) {
  float w[4];
  row_key_weights<kReverse>(w, nl2, scale, t, n);
  weighted_b_operands<T, kTiles>(acc, ka, dec, w, nl2, uK, uX, uW, t, bar, n);
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
}  // namespace la
