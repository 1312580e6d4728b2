// Device helpers shared by the lightning-attention kernels: cp.async tile staging,
// ldmatrix fragment loads and mma.sync m16n8k16 (bf16/fp16 operands, fp32 accumulate).
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

// λ^x = exp2(nl2 · x) with nl2 = -slope · log2(e); x is always a bounded, non-negative
// distance inside a block or segment, so this never overflows.
__device__ __forceinline__ float decay_pow(float nl2, float x) { return exp2f(nl2 * x); }

}  // namespace la
