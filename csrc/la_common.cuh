// Device helpers shared by the forward and backward kernels: cp.async tile staging,
// ldmatrix fragment loads, mma.sync m16n8k16 (bf16/fp16 operands, fp32 accumulate), the
// warp layout of the running D×E state (FwdTraits) and the state walks.
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A (16x16, row-major): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B (16x8, "col"):      b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g)
//   C (16x8, fp32):       c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
// so the C fragments of two adjacent 8-column tiles are, once packed to 16 bits, the A
// fragment of one 16-deep k-step (the P·V trick of FlashAttention).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "la_specs.h"

namespace la {

template <typename T> struct Pack2;
template <> struct Pack2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
  }
};
template <> struct Pack2<__half> {
  using type = __half2;
  static __device__ __forceinline__ uint32_t pack(float x, float y) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
  }
};

// (x, y) as a 16-bit pair (returned) and what that rounding leaves out, (x, y) − hi, as the
// 16-bit pair `lo`: hi + lo is (x, y) to about 2^-16 (the split operands of the d slope terms).
template <typename T>
__device__ __forceinline__ uint32_t split_pair(float x, float y, uint32_t& lo) {
  const uint32_t hi = Pack2<T>::pack(x, y);
  const float2 h = Pack2<T>::unpack(hi);
  lo = Pack2<T>::pack(x - h.x, y - h.y);
  return hi;
}

// D += A·B on one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                       uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16-byte global->shared copy; src_bytes = 0 fills the 16 bytes with zeros (rows past the
// end of a sequence), so padded rows contribute exact zeros, never stale data or NaN.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Tiles in shared memory are row-major with rows padded by 8 elements (16 bytes): the 8
// row addresses of one ldmatrix phase then fall in 8 distinct 4-bank groups.
// ldmatrix address of lane `lane` for the fragment kinds used below; `base` is the tile's
// shared address, rows are `stride` elements of 2 bytes.
//  A from a row-major [m][k] tile at (m0, k0), no transpose.
__device__ __forceinline__ uint32_t addr_a(uint32_t base, int stride, int m0, int k0, int lane) {
  const int mat = lane >> 3;
  const int r = m0 + (lane & 7) + ((mat & 1) ? 8 : 0);
  const int c = k0 + ((mat & 2) ? 8 : 0);
  return base + (r * stride + c) * 2;
}
//  A^T: A = X^T where X is a row-major [k][m] tile (e.g. K^T from K[token][d]); use .trans.
__device__ __forceinline__ uint32_t addr_at(uint32_t base, int stride, int m0, int k0, int lane) {
  const int mat = lane >> 3;
  const int r = k0 + (lane & 7) + ((mat & 2) ? 8 : 0);
  const int c = m0 + ((mat & 1) ? 8 : 0);
  return base + (r * stride + c) * 2;
}
//  B for two adjacent n-tiles from a row-major [n][k] tile (B = X^T, e.g. K in Q·K^T), no
//  transpose: r[0], r[1] = b0, b1 of n-tile n0; r[2], r[3] = b0, b1 of n-tile n0 + 8.
__device__ __forceinline__ uint32_t addr_bnk(uint32_t base, int stride, int n0, int k0, int lane) {
  const int mat = lane >> 3;
  const int r = n0 + (lane & 7) + ((mat & 2) ? 8 : 0);
  const int c = k0 + ((mat & 1) ? 8 : 0);
  return base + (r * stride + c) * 2;
}
//  B for two adjacent n-tiles from a row-major [k][n] tile (e.g. V in P·V); use .trans.
__device__ __forceinline__ uint32_t addr_bkn(uint32_t base, int stride, int n0, int k0, int lane) {
  const int mat = lane >> 3;
  const int r = k0 + (lane & 7) + ((mat & 1) ? 8 : 0);
  const int c = n0 + ((mat & 2) ? 8 : 0);
  return base + (r * stride + c) * 2;
}

// acc[nt] += a · B over the warp's kNT n-tiles [n0, n0 + 8·kNT), k rows [k0, k0 + 16) of a
// row-major [k][n] tile B (ldmatrix.trans, two n-tiles per load).
template <typename T, int kNT>
__device__ __forceinline__ void mma_a_bkn(float (&acc)[kNT][4], const uint32_t (&a)[4], uint32_t uB,
                                          int stride, int n0, int k0, int lane) {
#pragma unroll
  for (int np = 0; np < kNT / 2; ++np) {
    uint32_t b[4];
    ldsm_x4_t(b, addr_bkn(uB, stride, n0 + np * 16, k0, lane));
    mma16816<T>(acc[2 * np], a, b[0], b[1]);
    mma16816<T>(acc[2 * np + 1], a, b[2], b[3]);
  }
}

// An int 0 the compiler cannot see through. Values derived from it inside a loop are
// recomputed in each iteration instead of being hoisted out of the loop, where they would
// hold registers (or be spilled) for the whole loop.
__device__ __forceinline__ int opaque_zero() {
  int z;
  asm volatile("mov.b32 %0, 0;" : "=r"(z));
  return z;
}

// λ^x = exp2(nl2 · x) with nl2 = -slope · log2(e); x is always a bounded, non-negative
// distance inside a block or segment, so this never overflows.
__device__ __forceinline__ float decay_pow(float nl2, float x) { return exp2f(nl2 * x); }

template <typename T, int HD>
struct FwdTraits {
  using Shape = TileShape<HD>;
  static constexpr int kBlock = Shape::kBlock;
  static constexpr int kThreads = 256;
  static constexpr int kWarps = 8;
  static constexpr int kStride = Shape::kStride;          // smem row stride (elements)
  static constexpr int kTile = Shape::kTile;              // (64, HD) tile, padded rows
  static constexpr int kStateTile = Shape::kStateTile;    // (HD, HD) bf16 state copy
  static constexpr int kSWM = HD / 16;                   // state warps along D
  static constexpr int kSWN = kWarps / kSWM;             // state warps along E
  static constexpr int kSTN = HD / kSWN;                 // state columns per warp
  static constexpr int kSNT = kSTN / 8;                  // 8-wide n-tiles per warp (state)
  static constexpr int kONT = HD / 16;                   // n-tiles per warp (outputs, E/2)
  static constexpr int kSmemPass1 = Shape::kSmemFwdPass1;
  static constexpr int smem_pass2(int stages) { return Shape::smem_fwd_pass2(stages); }
  static constexpr int kSmemSlopePass2 = Shape::kSmemFwdSlopePass2;
};

// (64, HD) tile rows [t0, t0 + n) of a sequence -> smem; rows >= n are zero-filled.
template <int HD>
__device__ __forceinline__ void load_tile(void* dst, const void* src_, int64_t rs, int t0, int n,
                                          int tid) {
  constexpr int kStride = HD + 8;
  constexpr int kChunksPerRow = HD / 8;
  constexpr int kIters = 64 * kChunksPerRow / 256;
  const uint16_t* src = static_cast<const uint16_t*>(src_);
  const uint32_t base = smem_u32(dst);
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int c = tid + i * 256;
    const int r = c / kChunksPerRow;
    const int cc = c % kChunksPerRow;
    const bool ok = r < n;
    const uint16_t* s = src + (ok ? (int64_t)(t0 + r) * rs + cc * 8 : 0);
    cp_async16(base + (r * kStride + cc * 8) * 2, s, ok ? 16 : 0);
  }
}

// Calls f(nt, i, d, e) for every element acc[nt][i] of a 16 × kNT·8 mma accumulator warp
// tile whose rows start at m0 and columns at n0: (d, e) is the element's row and column.
template <int kNT, typename F>
__device__ __forceinline__ void for_each_acc(int m0, int n0, int lane, F&& f) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i)
      f(nt, i, m0 + gq + ((i & 2) ? 8 : 0), n0 + nt * 8 + 2 * tq + (i & 1));
}
// acc (warp tile at m0, n0) as fp32 to / from a D×E matrix with strides (sd, se).
template <int kNT>
__device__ __forceinline__ void store_state(float* dst, int64_t sd, int64_t se,
                                            const float (&acc)[kNT][4], int m0, int n0, int lane) {
  for_each_acc<kNT>(m0, n0, lane, [&](int nt, int i, int d, int e) { dst[d * sd + e * se] = acc[nt][i]; });
}
template <int kNT>
__device__ __forceinline__ void load_state(const float* src, int64_t sd, int64_t se,
                                           float (&acc)[kNT][4], int m0, int n0, int lane) {
  for_each_acc<kNT>(m0, n0, lane, [&](int nt, int i, int d, int e) { acc[nt][i] = src[d * sd + e * se]; });
}
// acc -> the 16-bit state copy in smem (row-major [d][e], padded stride).
template <typename T, int kNT>
__device__ __forceinline__ void state_to_smem(T* sS, int stride, const float (&acc)[kNT][4],
                                              int m0, int n0, int lane) {
  const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int e = n0 + nt * 8 + 2 * tq;
    *reinterpret_cast<uint32_t*>(sS + (m0 + gq) * stride + e) = Pack2<T>::pack(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<uint32_t*>(sS + (m0 + gq + 8) * stride + e) =
        Pack2<T>::pack(acc[nt][2], acc[nt][3]);
  }
}
// What state_to_smem's rounding leaves out, S − S̃, in 16 bits, laid out as state_to_smem's:
// Q S̃ + Q (S − S̃) is Q S to about 2^-16 of S.
template <typename T, int kNT>
__device__ __forceinline__ void state_residual_to_smem(T* sS, int stride, const float (&acc)[kNT][4],
                                                       int m0, int n0, int lane) {
  const int gq = lane >> 2, tq = lane & 3;
  auto residual = [](float a, float b) {
    uint32_t lo;
    split_pair<T>(a, b, lo);
    return lo;
  };
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int e = n0 + nt * 8 + 2 * tq;
    *reinterpret_cast<uint32_t*>(sS + (m0 + gq) * stride + e) = residual(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<uint32_t*>(sS + (m0 + gq + 8) * stride + e) = residual(acc[nt][2], acc[nt][3]);
  }
}

// Two 16 × 8 accumulator n-tiles (keys 16·kk..) as the A fragment of one 16-deep k-step.
template <typename T>
__device__ __forceinline__ void pack_a(uint32_t (&a)[4], const float (&pm)[2][4]) {
  a[0] = Pack2<T>::pack(pm[0][0], pm[0][1]);
  a[1] = Pack2<T>::pack(pm[0][2], pm[0][3]);
  a[2] = Pack2<T>::pack(pm[1][0], pm[1][1]);
  a[3] = Pack2<T>::pack(pm[1][2], pm[1][3]);
}

// Key tile kk of the P accumulator (its two n-tiles of 16 × 8 at tile[0], tile[1], this
// thread's rows r0 and r1 = r0 + 8) as an mma A fragment, masked and decayed: element (r, j)
// is kept where `live` and j ≤ r (kUpper false: causal rows) or j ≥ r (kUpper: the
// transposed product), times c·λ^|r − j|.
template <typename T, bool kUpper>
__device__ __forceinline__ void mask_decay_pack(uint32_t (&a)[4], const float (*tile)[4], int kk,
                                                bool live, int r0, int r1, int tq, float nl2,
                                                float c) {
  float pm[2][4];
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = (i & 2) ? r1 : r0;
      const int j = (2 * kk + h2) * 8 + 2 * tq + (i & 1);
      const bool keep = kUpper ? j >= r : j <= r;
      pm[h2][i] = (live && keep)
                      ? c * tile[h2][i] * decay_pow(nl2, (float)(kUpper ? j - r : r - j))
                      : 0.f;
    }
  pack_a<T>(a, pm);
}

template <typename T>
__device__ __forceinline__ uint32_t scale_pair(uint32_t u, float w0, float w1) {
  const float2 f = Pack2<T>::unpack(u);
  return Pack2<T>::pack(f.x * w0, f.y * w1);
}
// The scaled pair as a 16-bit pair (returned) plus the 16-bit remainder `lo`.
template <typename T>
__device__ __forceinline__ uint32_t scale_pair_split(uint32_t u, float w0, float w1, uint32_t& lo) {
  const float2 f = Pack2<T>::unpack(u);
  return split_pair<T>(f.x * w0, f.y * w1, lo);
}

// acc <- λ^n acc + diag-weighted Xᵀ · Y over the 64 rows of a block:
//   X (64, ·) and Y (64, ·) row-major tiles, A = Xᵀ rows m0.. (16), B = Y cols n0.. (kNT·8),
//   row j of the block weighted by w(j) = j < n ? wscale·λ^{wexp(j)} : 0, where
//   wexp(j) = wa + wb·j (forward: n-1-j; backward: j+1), times n - j with kMoment (the
//   moment's weights (n-j)·λ^{n-1-j}, see la_fwd_kernel.cuh).
// The weighted X is an mma operand, rounded to 16 bits. With kSplit it goes in as two,
// round(wX) and round(wX - round(wX)), two products: for weights near 1 (weak decay) a single
// rounding mostly gives back X itself, a bias of the effective decay that d slope, the
// derivative in the decay, amplifies; the split leaves ~2^-16 of wX, unbiased.
template <typename T, int kNT, bool kMoment = false, bool kSplit = false>
__device__ __forceinline__ void state_update(float (&acc)[kNT][4], uint32_t sX, uint32_t sY,
                                             int stride, int m0, int n0, int n, float nl2,
                                             float wa, float wb, float wscale, int lane) {
  const int tq = lane & 3;
  const float dn = decay_pow(nl2, (float)n);
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] *= dn;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk * 16 < n) {
      uint32_t a[4], lo[4];
      ldsm_x4_t(a, addr_at(sX, stride, m0, kk * 16, lane));
      float w[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int j = kk * 16 + 2 * tq + (x & 1) + ((x & 2) ? 8 : 0);
        w[x] = j < n ? wscale * decay_pow(nl2, wa + wb * (float)j) * (kMoment ? (float)(n - j) : 1.f)
                     : 0.f;
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float w0 = w[x & 2], w1 = w[(x & 2) + 1];  // a[0], a[1]: rows of w[0..1]
        if (kSplit)
          a[x] = scale_pair_split<T>(a[x], w0, w1, lo[x]);
        else
          a[x] = scale_pair<T>(a[x], w0, w1);
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, addr_bkn(sY, stride, n0 + np * 16, kk * 16, lane));
        mma16816<T>(acc[2 * np], a, b[0], b[1]);
        mma16816<T>(acc[2 * np + 1], a, b[2], b[3]);
        if (kSplit) {
          mma16816<T>(acc[2 * np], lo, b[0], b[1]);
          mma16816<T>(acc[2 * np + 1], lo, b[2], b[3]);
        }
      }
    }
  }
}

}  // namespace la
