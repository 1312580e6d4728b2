// The one-token decode step (lightning_attn_decode): S <- λ S + kᵀ v in place, o = scale · q S.
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

// One token: S <- λ S + kᵀ v, o = scale · q S. One CTA of 256 threads per (b, h); threads
// own float4 columns of S and a stride of its rows, so the state streams through once,
// 16 bytes per access. o is contiguous (B, H, E).
template <typename T>
__global__ void __launch_bounds__(256) la_decode_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                        const T* __restrict__ v, float* __restrict__ state,
                                                        T* __restrict__ o, const float* __restrict__ slope,
                                                        float scale, int H, int D, int E, int64_t q_bs,
                                                        int64_t q_hs, int64_t k_bs, int64_t k_hs,
                                                        int64_t v_bs, int64_t v_hs) {
  __shared__ float sq[256], sk[256], sv[256];
  __shared__ float4 red[256];
  const int bh = blockIdx.x, b = bh / H, h = bh % H, tid = threadIdx.x;
  for (int i = tid; i < D; i += 256) {
    sq[i] = to_f(q[b * q_bs + h * q_hs + i]);
    sk[i] = to_f(k[b * k_bs + h * k_hs + i]);
  }
  for (int i = tid; i < E; i += 256) sv[i] = to_f(v[b * v_bs + h * v_hs + i]);
  __syncthreads();
  const float lam = slope ? expf(-slope[h]) : 1.f;
  const int C4 = E / 4, R = 256 / C4;
  const int c4 = tid % C4, r = tid / C4;
  float4* S = reinterpret_cast<float4*>(state + (int64_t)bh * D * E);
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
    T* out = o + (int64_t)bh * E + 4 * tid;
    out[0] = from_f<T>(scale * sum.x); out[1] = from_f<T>(scale * sum.y);
    out[2] = from_f<T>(scale * sum.z); out[3] = from_f<T>(scale * sum.w);
  }
}

void run_decode(const void* q, const void* k, const void* v, float* state, void* o,
                const float* slope, float scale, int B, int H, int D, int E, int64_t q_bs,
                int64_t q_hs, int64_t k_bs, int64_t k_hs, int64_t v_bs, int64_t v_hs, int dtype,
                cudaStream_t stream) {
  const int grid = B * H;
#define LA_DECODE(T)                                                                          \
  la_decode_kernel<T><<<grid, 256, 0, stream>>>(                                              \
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), state,    \
      static_cast<T*>(o), slope, scale, H, D, E, q_bs, q_hs, k_bs, k_hs, v_bs, v_hs)
  if (dtype == 0) LA_DECODE(float);
  else if (dtype == 1) LA_DECODE(__half);
  else LA_DECODE(__nv_bfloat16);
#undef LA_DECODE
}

}  // namespace la
