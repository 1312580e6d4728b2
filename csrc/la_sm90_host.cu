// Host side of the sm_90a kernels: TMA descriptors (through the driver's entry point, so the
// extension needs no link against libcuda), the rule for when the Hopper kernels run, and the
// run-time switches of the kernels (read once).
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "la_fwd_sm90.cuh"

#ifndef LA_CUDA_ARCHS
#define LA_CUDA_ARCHS "unknown"
#endif

namespace la {

namespace {
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}
}  // namespace

CUtensorMap make_tile_map(const void* base, bool bf16, int HD, int N, int H, int B, int64_t rs,
                          int64_t hs, int64_t bs) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {(cuuint64_t)HD, (cuuint64_t)N, (cuuint64_t)H, (cuuint64_t)B};
  // bytes; a dimension of extent 1 may have any stride, TMA wants a multiple of 16 anyway
  auto stride = [](int64_t s, int extent) { return (cuuint64_t)(extent == 1 ? 16 : s * 2); };
  const cuuint64_t strides[3] = {stride(rs, N), stride(hs, H), stride(bs, B)};
  const cuuint32_t box[4] = {64, 64, 1, 1};
  const cuuint32_t elem[4] = {1, 1, 1, 1};
  const CUresult r = encode_tiled()(
      &map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(base), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("lightning_attn (cuda): cuTensorMapEncodeTiled failed (" +
                             std::to_string((int)r) + ")");
  return map;
}

namespace {
// A run-time switch: the variable set to "0" (or "1") turns off (on) what defaults to on
// (off). Each caller reads it once.
bool env_switch(const char* name, bool default_on) {
  const char* e = std::getenv(name);
  if (e == nullptr) return default_on;
  return default_on ? std::strcmp(e, "0") != 0 : std::strcmp(e, "1") == 0;
}
}  // namespace

// The build holds sm_90a code and the driver has the TMA entry point; the kernels then run on
// devices of compute capability 9.0 (la_plan.cpp: the forward, the dq sweep (with or without
// d slope terms) and the dk/dv sweep) unless LIGHTNING_ATTENTION_SM90=0 (read once, for
// comparisons with the mma.sync kernels).
bool sm90_available() {
  static const bool ok = env_switch("LIGHTNING_ATTENTION_SM90", true) &&
                         std::string(LA_CUDA_ARCHS).find("9.0a") != std::string::npos &&
                         encode_tiled() != nullptr;
  return ok;
}

// The fused dk/dv kernel (la_bwd_sm90.cuh) rather than the two reversed passes, unless
// LIGHTNING_ATTENTION_SM90_FUSED_BWD=0 (read once, for comparisons).
bool sm90_fused_bwd() {
  static const bool on = env_switch("LIGHTNING_ATTENTION_SM90_FUSED_BWD", true);
  return on;
}

// Pass 1 (with moments too) up to each head's decay horizon (la_state_sm90.cuh), unless
// LIGHTNING_ATTENTION_HORIZON=0 (read once, for comparisons).
bool sm90_horizon() {
  static const bool on = env_switch("LIGHTNING_ATTENTION_HORIZON", true);
  return on;
}

// The dq sweep's d slope terms with Q S from the state copy and its residual (la_fwd_sm90.cuh
// kResidual) unless LIGHTNING_ATTENTION_DSLOPE_RESIDUAL=0 (read once).
bool sm90_dslope_residual() {
  static const bool on = env_switch("LIGHTNING_ATTENTION_DSLOPE_RESIDUAL", true);
  return on;
}

// The learnable-slope backward's plans (la_plan.cpp, la_ops.cpp), unless
// LIGHTNING_ATTENTION_DSLOPE_PLANS=0 (read once, for comparisons).
bool sm90_dslope_plans() {
  static const bool on = env_switch("LIGHTNING_ATTENTION_DSLOPE_PLANS", true);
  return on;
}

}  // namespace la
