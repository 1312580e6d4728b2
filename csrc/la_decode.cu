// The one-token decode step (lightning_attn_decode, serving.decode): S <- λ S + kᵀ v in
// place, o = scale · q S, for dense states or rows of a pool addressed by slot.
#include "la_params.h"
#include "la_sm90.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace la {

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f(float x) { return x; }
template <> __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f(float x) { return x; }
template <> __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }

namespace {

// The step only streams the float32 state (read once, written once: 2 · D·E · 4 bytes per
// (b, h)), so the kernels are shaped for bandwidth. This one runs before sm_90 and, on sm_90,
// for the small batches it splits (la_decode_bulk_kernel below takes the others).
// Contiguous streams: a CTA of 512 threads owns one (b, h) and every state row, whole rows
// (of its columns) at a time. Thread (ry, cx) holds float4 column cx of rows ry, ry + R, ...
// (R = 512 / C4 row groups of C4 float4 columns), so at E = 128 a warp loads one whole
// 512-byte row per instruction and neighbouring warps the neighbouring rows: each DRAM page is
// read and written by one CTA at once. A thread issues all its kRows 16-byte loads before
// anything waits (64 KB in flight per CTA), the inputs go through shared memory behind them,
// and the state is streamed past the caches (ld/st .cs: it is not touched again within the
// step). When B·H CTAs would leave SMs idle (small batches), `split` CTAs share one (b, h) by
// slices of E: an output column needs only its own state columns, so no CTA waits for another.
constexpr int kThreads = 512;
constexpr int kRows = 8;  // rows per thread per pass; 32 registers of state
constexpr int kMaxD = 256, kMaxSplit = 4;

// The sum over D of each column's partials acc (thread (ry, cx) of the CTA) into
// o = scale · sum: first across a warp's row groups by shuffles where C4 divides 32, then the
// partials left (one per warp, or per row group) by the first C4 threads, through `red` (one
// float4 per thread).
template <typename T>
__device__ __forceinline__ void store_output(float4 acc, float4* red, int C4, int R, float scale,
                                             T* out) {
  const int tid = threadIdx.x, lane = tid % 32;
  const bool by_warp = 32 % C4 == 0;
  if (by_warp)
    for (int off = C4; off < 32; off *= 2) {
      acc.x += __shfl_xor_sync(~0u, acc.x, off); acc.y += __shfl_xor_sync(~0u, acc.y, off);
      acc.z += __shfl_xor_sync(~0u, acc.z, off); acc.w += __shfl_xor_sync(~0u, acc.w, off);
    }
  if (!by_warp || lane < C4) red[by_warp ? tid / 32 * C4 + lane : tid] = acc;
  const int parts = by_warp ? blockDim.x / 32 : R;
  __syncthreads();
  if (tid < C4) {
    float4 sum = red[tid];
    for (int r = 1; r < parts; ++r) {
      const float4 x = red[r * C4 + tid];
      sum.x += x.x; sum.y += x.y; sum.z += x.z; sum.w += x.w;
    }
    out += 4 * tid;
    out[0] = from_f<T>(scale * sum.x); out[1] = from_f<T>(scale * sum.y);
    out[2] = from_f<T>(scale * sum.z); out[3] = from_f<T>(scale * sum.w);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) la_decode_kernel(const DecodeParams p) {
  __shared__ float sq[kMaxD], sk[kMaxD];
  __shared__ float4 red[kThreads];
  const int split = gridDim.x / (p.B * p.H);
  const int bh = blockIdx.x / split, rank = blockIdx.x - bh * split;
  const int b = bh / p.H, h = bh - b * p.H;
  const int W4 = p.E / 4, C4 = W4 / split, R = kThreads / C4;  // row: W4 float4, C4 of them here
  const int tid = threadIdx.x, cx = tid % C4, ry = tid / C4;
  const bool active = ry < R;
  T* out = static_cast<T*>(p.o) + (int64_t)bh * p.E + 4 * rank * C4;
  const int64_t row = state_out_row(p.rows, b);
  if (row < 0) {  // a padding row: no state, o = 0
    if (tid < C4)
      for (int i = 0; i < 4; ++i) out[4 * cx + i] = from_f<T>(0.f);
    return;
  }
  float4* S = reinterpret_cast<float4*>(p.state + (row * p.H + h) * p.D * p.E) + rank * C4 + cx;
  float4 s[kRows];
  int d = ry;
#pragma unroll
  for (int j = 0; j < kRows; ++j)
    if (active && d + R * j < p.D) s[j] = __ldcs(S + (d + R * j) * W4);

  const T* qg = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_bs + h * p.k_hs;
#pragma unroll 1
  for (int i = tid; i < p.D; i += kThreads) {
    sq[i] = to_f(qg[i]);
    sk[i] = to_f(kg[i]);
  }
  const T* vg = static_cast<const T*>(p.v) + b * p.v_bs + h * p.v_hs + 4 * (rank * C4 + cx);
  const float4 vv = make_float4(to_f(vg[0]), to_f(vg[1]), to_f(vg[2]), to_f(vg[3]));
  const float lam = p.slope ? expf(-p.slope[h]) : 1.f;
  __syncthreads();

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (;;) {  // passes of R · kRows rows: one at D = E = 128 without a split
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int dj = d + R * j;
      if (active && dj < p.D) {
        const float kd = sk[dj], qd = sq[dj];
        float4 x = s[j];
        x.x = fmaf(lam, x.x, kd * vv.x); x.y = fmaf(lam, x.y, kd * vv.y);
        x.z = fmaf(lam, x.z, kd * vv.z); x.w = fmaf(lam, x.w, kd * vv.w);
        __stcs(S + dj * W4, x);
        acc.x = fmaf(qd, x.x, acc.x); acc.y = fmaf(qd, x.y, acc.y);
        acc.z = fmaf(qd, x.z, acc.z); acc.w = fmaf(qd, x.w, acc.w);
      }
    }
    d += R * kRows;
    if (d - ry >= p.D) break;
#pragma unroll
    for (int j = 0; j < kRows; ++j)
      if (active && d + R * j < p.D) s[j] = __ldcs(S + (d + R * j) * W4);
  }
  store_output(acc, red, C4, R, p.scale, out);
}

// The bulk kernel (sm_90, where B·H CTAs fill the SMs; la_decode_kernel splits E below
// that): the state streams through shared memory instead of registers, so
// that what a CTA keeps in flight is not bounded by its registers and its stores do not hold
// it (measured on an H200: 3.5-4% faster than la_decode_kernel at B = 64-256, H = 32,
// D = E = 128; 1.10x of a copy of the states at B = 128 instead of 1.15x). A CTA of 128 threads
// per (b, h); one thread issues bulk copies (cp.async.bulk, no tensor map: a state is one
// contiguous D·E·4 bytes) of chunks of whole rows (16 KB) into a ring of kSlots chunks, each
// with an mbarrier; the threads update a chunk in place in shared memory, add q · rows to
// their output column, and the one thread bulk-stores the chunk back to the state, which
// runs on while the next chunks are updated and after the CTA's last chunk (the CTA only
// waits for the stores' reads of shared memory before it exits). 64 KB of ring: 3 CTAs per
// SM, 192 KB of loads in flight per SM; at D = E = 128 the whole state is one ring.
constexpr int kBulkThreads = 128, kSlots = 4, kChunkBytes = 16384;

template <typename T>
__global__ void __launch_bounds__(kBulkThreads) la_decode_bulk_kernel(const DecodeParams p) {
#if __CUDA_ARCH__ >= 900
  using namespace sm90;
  extern __shared__ __align__(128) float4 ring[];  // kSlots chunks
  __shared__ float sq[kMaxD], sk[kMaxD];
  __shared__ float4 red[kBulkThreads];
  __shared__ __align__(8) uint64_t full[kSlots];
  const int bh = blockIdx.x, b = bh / p.H, h = bh - b * p.H;
  const int C4 = p.E / 4, R = kBulkThreads / C4;
  const int tid = threadIdx.x, cx = tid % C4, ry = tid / C4;
  const bool active = ry < R;
  const int64_t row = state_out_row(p.rows, b);
  if (row < 0) {  // a padding row: no state, o = 0
    if (tid < C4)
      for (int i = 0; i < 4; ++i) static_cast<T*>(p.o)[(int64_t)bh * p.E + 4 * cx + i] = from_f<T>(0.f);
    return;
  }
  const int rows = max(1, kChunkBytes / (16 * C4));  // state rows per chunk
  const uint32_t chunk_f4 = rows * C4;               // float4 per chunk
  const int nchunks = (p.D + rows - 1) / rows;
  float4* S = reinterpret_cast<float4*>(p.state + (row * p.H + h) * p.D * p.E);
  const uint32_t ring_s = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  const uint32_t full_s = static_cast<uint32_t>(__cvta_generic_to_shared(full));
  // chunk c into its slot: rows [c·rows, min(D, (c + 1)·rows))
  auto load = [&](int c) {
    const uint32_t bytes = 16u * C4 * (min(p.D, (c + 1) * rows) - c * rows);
    const uint32_t bar = full_s + 8 * (c % kSlots);
    mbar_expect_tx(bar, bytes);
    bulk_load(ring_s + 16u * chunk_f4 * (c % kSlots), S + (int64_t)c * chunk_f4, bytes, bar);
  };
  if (tid == 0) {
    for (int i = 0; i < kSlots; ++i) mbar_init(full_s + 8 * i, 1);
    fence_barrier_init();
    for (int c = 0; c < min(nchunks, kSlots); ++c) load(c);
  }
  const T* qg = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_bs + h * p.k_hs;
  for (int i = tid; i < p.D; i += kBulkThreads) {
    sq[i] = to_f(qg[i]);
    sk[i] = to_f(kg[i]);
  }
  const T* vg = static_cast<const T*>(p.v) + b * p.v_bs + h * p.v_hs + 4 * cx;
  const float4 vv = make_float4(to_f(vg[0]), to_f(vg[1]), to_f(vg[2]), to_f(vg[3]));
  const float lam = p.slope ? expf(-p.slope[h]) : 1.f;
  __syncthreads();  // the barriers are initialised, q and k in shared memory

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int c = 0; c < nchunks; ++c) {
    const int slot = c % kSlots, d0 = c * rows, n = min(p.D, d0 + rows) - d0;
    mbar_wait(full_s + 8 * slot, (c / kSlots) & 1);
    float4* x4 = ring + slot * chunk_f4;
    if (active)
#pragma unroll 4
      for (int r = ry; r < n; r += R) {
        const float kd = sk[d0 + r], qd = sq[d0 + r];
        float4 x = x4[r * C4 + cx];
        x.x = fmaf(lam, x.x, kd * vv.x); x.y = fmaf(lam, x.y, kd * vv.y);
        x.z = fmaf(lam, x.z, kd * vv.z); x.w = fmaf(lam, x.w, kd * vv.w);
        x4[r * C4 + cx] = x;
        acc.x = fmaf(qd, x.x, acc.x); acc.y = fmaf(qd, x.y, acc.y);
        acc.z = fmaf(qd, x.z, acc.z); acc.w = fmaf(qd, x.w, acc.w);
      }
    fence_async_shared();  // the updated chunk, written by every thread, for the bulk store
    __syncthreads();
    if (tid == 0) {
      bulk_store(S + (int64_t)d0 * C4, ring_s + 16u * chunk_f4 * slot, 16u * C4 * n);
      bulk_commit();
      if (c + kSlots < nchunks) {  // the slot again, once the store has read it
        bulk_wait_all<true>();
        load(c + kSlots);
      }
    }
  }
  store_output(acc, red, C4, R, p.scale, static_cast<T*>(p.o) + (int64_t)bh * p.E);
  if (tid == 0) bulk_wait_all<true>();  // the stores have read the ring
#endif
}

// Whether the decode kernels run their sm_90 code (the bulk copies): a device of compute
// capability 9 or more and a build with sm_90 code (not a JIT of older PTX).
template <typename T>
bool sm90_code(const DecodeParams& p) {
  static const bool built = [] {
    cudaFuncAttributes a{};
    return cudaFuncGetAttributes(&a, la_decode_bulk_kernel<T>) == cudaSuccess && a.ptxVersion >= 90;
  }();
  return built && p.cc_major >= 9;
}

// CTAs per (b, h): slices of E when B·H CTAs would leave SMs idle.
int decode_split(const DecodeParams& p) {
  int split = 1;
  while (split < kMaxSplit && (int64_t)p.B * p.H * split < p.sms && (p.E / 4) % (2 * split) == 0)
    split *= 2;
  return split;
}

template <typename T>
void launch_decode(const DecodeParams& p, cudaStream_t stream) {
  const int split = decode_split(p);
  const int64_t items = (int64_t)p.B * p.H;
  if (split == 1 && sm90_code<T>(p)) {
    const int smem = kSlots * kChunkBytes;
    cudaFuncSetAttribute(la_decode_bulk_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    la_decode_bulk_kernel<T><<<(unsigned)items, kBulkThreads, smem, stream>>>(p);
    return;
  }
  la_decode_kernel<T><<<(unsigned)(items * split), kThreads, 0, stream>>>(p);
}

template <template <typename> class Launch>
void by_dtype(int dtype, const DecodeParams& p, cudaStream_t stream) {
  if (dtype == 0) Launch<float>{}(p, stream);
  else if (dtype == 1) Launch<__half>{}(p, stream);
  else Launch<__nv_bfloat16>{}(p, stream);
}

template <typename T>
struct Pooled {
  void operator()(const DecodeParams& p, cudaStream_t stream) { launch_decode<T>(p, stream); }
};
}  // namespace

void run_decode(const DecodeParams& p, int dtype, cudaStream_t stream) {
  by_dtype<Pooled>(dtype, p, stream);
}


}  // namespace la
