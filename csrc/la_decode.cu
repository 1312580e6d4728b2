// The one-token decode step (lightning_attn_decode, serving.decode): S <- λ S + kᵀ v in
// place, o = scale · q S, for dense states or rows of a pool addressed by slot.
#include "la_params.h"

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
// (b, h)), so the kernel is shaped for bandwidth. A CTA of 128 threads owns one (b, h) and a
// slice of kCols float4 columns (32 floats, 128 bytes of each state row) of E, all D rows:
// thread (ry, cx) holds rows ry, ry + 16, ... of float4 column cx, and issues all its kRows
// 16-byte loads at once, before anything else waits. So every SM keeps ~128 KB of loads in
// flight (8 CTAs of 128 threads × kRows × 16 bytes), no CTA waits for its inputs before its
// state loads leave (the inputs go through shared memory behind them), and small batches
// still spread over E / 32 CTAs per (b, h). The output's sum over D stays inside the CTA.
constexpr int kThreads = 128;
constexpr int kCols = 8;                      // float4 columns of a CTA's slice of E
constexpr int kRowGroups = kThreads / kCols;  // 16 threads down D
constexpr int kMaxD = 256;

template <typename T, int kRows>  // kRows: state rows per thread, >= D / 16
__global__ void __launch_bounds__(kThreads) la_decode_kernel(const DecodeParams p) {
  __shared__ float sq[kMaxD], sk[kMaxD];
  __shared__ float4 red[kThreads / 32][kCols];
  const int slices = (p.E / 4 + kCols - 1) / kCols;
  const int bh = blockIdx.x / slices, slice = blockIdx.x - bh * slices;
  const int b = bh / p.H, h = bh - b * p.H;
  const int tid = threadIdx.x, cx = tid % kCols, ry = tid / kCols;
  const int C4 = p.E / 4, c4 = slice * kCols + cx;  // this thread's float4 column of E
  const bool col = c4 < C4;
  T* out = static_cast<T*>(p.o) + (int64_t)bh * p.E + 4 * c4;
  const int64_t row = state_out_row(p.rows, b);
  if (row < 0) {  // a padding row: no state, o = 0
    if (ry == 0 && col)
      for (int i = 0; i < 4; ++i) out[i] = from_f<T>(0.f);
    return;
  }
  float4* S = reinterpret_cast<float4*>(p.state + (row * p.H + h) * p.D * p.E) + c4;
  float4 s[kRows];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const int d = ry + kRowGroups * j;
    if (col && d < p.D) s[j] = S[(int64_t)d * C4];
  }

  const T* qg = static_cast<const T*>(p.q) + b * p.q_bs + h * p.q_hs;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_bs + h * p.k_hs;
#pragma unroll 1
  for (int d = tid; d < p.D; d += kThreads) {
    sq[d] = to_f(qg[d]);
    sk[d] = to_f(kg[d]);
  }
  float4 vv = make_float4(0.f, 0.f, 0.f, 0.f);
  if (col) {
    const T* vg = static_cast<const T*>(p.v) + b * p.v_bs + h * p.v_hs + 4 * c4;
    vv = make_float4(to_f(vg[0]), to_f(vg[1]), to_f(vg[2]), to_f(vg[3]));
  }
  const float lam = p.slope ? expf(-p.slope[h]) : 1.f;
  __syncthreads();

  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const int d = ry + kRowGroups * j;
    if (col && d < p.D) {
      const float kd = sk[d], qd = sq[d];
      float4 x = s[j];
      x.x = fmaf(lam, x.x, kd * vv.x); x.y = fmaf(lam, x.y, kd * vv.y);
      x.z = fmaf(lam, x.z, kd * vv.z); x.w = fmaf(lam, x.w, kd * vv.w);
      S[(int64_t)d * C4] = x;
      acc.x = fmaf(qd, x.x, acc.x); acc.y = fmaf(qd, x.y, acc.y);
      acc.z = fmaf(qd, x.z, acc.z); acc.w = fmaf(qd, x.w, acc.w);
    }
  }
  // sum over D: the 4 row groups of a warp (lanes cx, cx + 8, cx + 16, cx + 24), then the warps
#pragma unroll
  for (int off = kCols; off < 32; off *= 2) {
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, off);
    acc.y += __shfl_xor_sync(0xffffffffu, acc.y, off);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, off);
    acc.w += __shfl_xor_sync(0xffffffffu, acc.w, off);
  }
  if (tid % 32 < kCols) red[tid / 32][cx] = acc;
  __syncthreads();
  if (ry == 0 && col) {
    float4 sum = red[0][cx];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) {
      const float4 x = red[w][cx];
      sum.x += x.x; sum.y += x.y; sum.z += x.z; sum.w += x.w;
    }
    out[0] = from_f<T>(p.scale * sum.x); out[1] = from_f<T>(p.scale * sum.y);
    out[2] = from_f<T>(p.scale * sum.z); out[3] = from_f<T>(p.scale * sum.w);
  }
}

template <typename T>
void launch_decode(const DecodeParams& p, cudaStream_t stream) {
  const int slices = (p.E / 4 + kCols - 1) / kCols;
  const dim3 grid((unsigned)((int64_t)p.B * p.H * slices));
  if (p.D <= 4 * kRowGroups)
    la_decode_kernel<T, 4><<<grid, kThreads, 0, stream>>>(p);
  else if (p.D <= 8 * kRowGroups)
    la_decode_kernel<T, 8><<<grid, kThreads, 0, stream>>>(p);
  else
    la_decode_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p);
}

// The first kernel: one CTA of 256 threads per (b, h) of a dense state; threads own float4
// columns of S and a stride of its rows.
template <typename T>
__global__ void __launch_bounds__(256) la_decode_dense_v1_kernel(const DecodeParams p) {
  __shared__ float sq[256], sk[256], sv[256];
  __shared__ float4 red[256];
  const int H = p.H, D = p.D, E = p.E;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, tid = threadIdx.x;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  for (int i = tid; i < D; i += 256) {
    sq[i] = to_f(q[b * p.q_bs + h * p.q_hs + i]);
    sk[i] = to_f(k[b * p.k_bs + h * p.k_hs + i]);
  }
  for (int i = tid; i < E; i += 256) sv[i] = to_f(v[b * p.v_bs + h * p.v_hs + i]);
  __syncthreads();
  const float lam = p.slope ? expf(-p.slope[h]) : 1.f;
  const int C4 = E / 4, R = 256 / C4;
  const int c4 = tid % C4, r = tid / C4;
  float4* S = reinterpret_cast<float4*>(p.state + (int64_t)bh * D * E);
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (r < R) {
    const float4 vv = make_float4(sv[4 * c4], sv[4 * c4 + 1], sv[4 * c4 + 2], sv[4 * c4 + 3]);
#pragma unroll 4
    for (int d = r; d < D; d += R) {
      float4 s = S[(int64_t)d * C4 + c4];
      const float kd = sk[d], qd = sq[d];
      s.x = lam * s.x + kd * vv.x; s.y = lam * s.y + kd * vv.y;
      s.z = lam * s.z + kd * vv.z; s.w = lam * s.w + kd * vv.w;
      S[(int64_t)d * C4 + c4] = s;
      acc.x += qd * s.x; acc.y += qd * s.y; acc.z += qd * s.z; acc.w += qd * s.w;
    }
  }
  red[tid] = acc;
  __syncthreads();
  if (tid < C4) {
    float4 sum = red[tid];
    for (int rr = 1; rr < R; ++rr) {
      const float4 x = red[rr * C4 + tid];
      sum.x += x.x; sum.y += x.y; sum.z += x.z; sum.w += x.w;
    }
    T* out = static_cast<T*>(p.o) + (int64_t)bh * E + 4 * tid;
    out[0] = from_f<T>(p.scale * sum.x); out[1] = from_f<T>(p.scale * sum.y);
    out[2] = from_f<T>(p.scale * sum.z); out[3] = from_f<T>(p.scale * sum.w);
  }
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
template <typename T>
struct DenseV1 {
  void operator()(const DecodeParams& p, cudaStream_t stream) {
    la_decode_dense_v1_kernel<T><<<p.B * p.H, 256, 0, stream>>>(p);
  }
};

}  // namespace

void run_decode(const DecodeParams& p, int dtype, cudaStream_t stream) {
  by_dtype<Pooled>(dtype, p, stream);
}

void run_decode_dense_v1(const DecodeParams& p, int dtype, cudaStream_t stream) {
  by_dtype<DenseV1>(dtype, p, stream);
}

}  // namespace la
