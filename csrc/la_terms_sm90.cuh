// The d slope terms' building blocks of the sm_90a dq sweep (la_fwd_sm90.cuh kTerms): per
// block the real q against dq's inter-block part, split state and moment updates, the moment
// term <M, G>, the final state's term, and the consumers' shares summed into one τ per token.
#pragma once

#include "la_block_sm90.cuh"

namespace la {
namespace sm90 {


__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) {
  uint32_t x;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(x) : "r"(addr));
  return x;
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Rows r0 and r0 + 8 of the 64 × 64 accumulator tile `a` dotted, over this thread's columns,
// with the same elements of the 16-bit (64, 64) box at `box` (rows = tokens): the real q
// against dq's inter-block part. (Addresses from an opaque zero: not hoisted out of the loop.)
template <typename T>
__device__ __forceinline__ void row_dots(float& d0, float& d1, const float (&a)[32], uint32_t box,
                                         int r0, int tq) {
  using P2 = Pack2<T>;
  r0 += opaque_zero();
  d0 = d1 = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 x0 = P2::unpack(lds_u32(box + sw128(r0, 8 * j + 2 * tq)));
    const float2 x1 = P2::unpack(lds_u32(box + sw128(r0 + 8, 8 * j + 2 * tq)));
    d0 += x0.x * a[4 * j] + x0.y * a[4 * j + 1];
    d1 += x1.x * a[4 * j + 2] + x1.y * a[4 * j + 3];
  }
}

// acc += (diag(w) X)ᵀ B for one 64-row box of D: X the (64 tokens, 64) box at uX (weights w
// as weighted_keys_t's, tokens from n on selected away), B the MN-major box at uB, the
// weighted operand in two 16-bit parts (split); waits for it (frees the operand registers).
template <typename T>
__device__ __forceinline__ void split_update_box(float (&acc)[32], uint32_t uX, uint32_t uB,
                                                 const float (&w)[4][4], int warp, int lane, int n) {
  uint32_t hi[1][4][4], lo[1][4][4];
  weighted_keys_t<T, 1, true>(hi, uX, w, warp, lane, n, lo);
  fence_regs(acc);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    wgmma_rs_64x64<T>(acc, hi[0][kk], desc_sw128(uB + kk * 2048));
    wgmma_rs_64x64<T>(acc, lo[0][kk], desc_sw128(uB + kk * 2048));
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(acc);
}

// The moment's recurrence before its product, M ← λ^n (M + n S) (M and S at the block's
// start), and its key weights (n − j) λ^{n−1−j} from the state's, wk (keys as in
// weighted_keys_t); the caller adds (diag(wm) K)ᵀ V with split operands.
template <int kTiles>
__device__ __forceinline__ void moment_decay(float (&m)[kTiles][32], const float (&s)[kTiles][32],
                                             float (&wm)[4][4], const float (&wk)[4][4],
                                             float total, int tq, int n) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x)
      wm[kk][x] = wk[kk][x] * (float)(n - (16 * kk + 2 * tq + (x & 1) + ((x & 2) ? 8 : 0)));
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 32; ++i) m[dt][i] = (m[dt][i] + (float)n * s[dt][i]) * total;
}

// The warp's share of <M_w, G_w> with G_w = (diag(λ^{j+1}) Q)ᵀ R_w over the block's tokens
// j < n (R_w: this consumer's box of the real q, its rows from n on zero): the block's moment
// term without the scale, M at the block's start in fp32, G from split operands (its weights
// are near 1 for weak decay), one box of D at a time. Waits for every wgmma of the warpgroup.
// Its weights come from an opaque zero: computed at each call, not hoisted out of the
// caller's loop.
template <typename T, int kTiles>
__device__ __forceinline__ float moment_share(const float (&m)[kTiles][32], uint32_t uQ,
                                              uint32_t uRw, float nl2, int warp, int lane, int n) {
  const int tq = (lane & 3) + opaque_zero();
  float wq[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int x = 0; x < 4; ++x)
      wq[kk][x] = decay_pow(nl2, (float)(16 * kk + 2 * tq + (x & 1) + ((x & 2) ? 8 : 0) + 1));
  float x = 0.f;
#pragma unroll
  for (int dt = 0; dt < kTiles; ++dt) {
    float g[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) g[i] = 0.f;
    split_update_box<T>(g, uQ + dt * 8192, uRw, wq, warp, lane, n);
#pragma unroll
    for (int i = 0; i < 32; ++i) x += m[dt][i] * g[i];
  }
  return warp_sum(x);
}

// The warp's share of the final state's term <dS_f, M − S> over this consumer's slice
// (columns [64w, 64w + 64)), dS_f's element (d, e) at dsf[d·sd + e·se]. (Addresses from an
// opaque zero: not hoisted out of the caller's loop.)
template <int kTiles>
__device__ __forceinline__ float final_share(const float (&m)[kTiles][32],
                                             const float (&s)[kTiles][32], const float* dsf,
                                             int64_t sd, int64_t se, int w, int warp, int lane) {
  dsf += opaque_zero();
  float x = 0.f;
  for_each_state<kTiles>(warp, lane, [&](int dt, int i, int d, int e) {
    x += dsf[d * sd + (64 * w + e) * se] * (m[dt][i] - s[dt][i]);
  });
  return warp_sum(x);
}

// A block's terms from the consumer warpgroups' shares into out[0 .. n): each thread's
// row partials part0, part1 of rows r0, r0 + 8 (its columns; summed over the quad here), each
// warp's shares `first` (the block's first token) and `last` (its last). `red` is this
// block's buffer (double-buffered by block parity: a consumer writes block c + 2's only after
// the barrier of block c + 1, which consumer 0 reaches after reading block c's). Consumer 0
// adds the shares in a fixed order (deterministic) and writes each token once.
template <int kConsumers>
__device__ __forceinline__ void block_terms(float* out, float* red, float part0, float part1,
                                            float first, float last, int w, int t, int r0, int n,
                                            int bar) {
  const int warp = t >> 5, lane = t & 31;
  part0 = quad_sum(part0);
  part1 = quad_sum(part1);
  float* firsts = red + kConsumers * 64;
  float* lasts = firsts + kConsumers * 4;
  if ((lane & 3) == 0) {
    red[w * 64 + r0] = part0;
    red[w * 64 + r0 + 8] = part1;
  }
  if (lane == 0) {
    firsts[w * 4 + warp] = first;
    lasts[w * 4 + warp] = last;
  }
  named_barrier(bar, 128 * kConsumers);
  if (w == 0 && t < n) {
    float x = 0.f;
#pragma unroll
    for (int c = 0; c < kConsumers; ++c) x += red[c * 64 + t];
    if (t == 0)
#pragma unroll
      for (int i = 0; i < 4 * kConsumers; ++i) x += firsts[i];
    if (t == n - 1)
#pragma unroll
      for (int i = 0; i < 4 * kConsumers; ++i) x += lasts[i];
    out[t] = x;
  }
}

}  // namespace sm90
}  // namespace la
