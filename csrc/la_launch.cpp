// Kernel launches (la_launch.h).
#include "la_launch.h"

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "la_specs.h"

namespace la {
namespace {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>, integral_constant<int, D>) for the compiled (dtype, head dim) pair of
// la_specs.h; any other pair is an error, never mapped to a compiled one.
template <typename F>
void dispatch_kernel(at::ScalarType dtype, int64_t hd, F&& f) {
#define LA_HEAD_DIM_CASE(D) \
  if (hd == D) return f(TypeTag<T>{}, std::integral_constant<int, D>{});
#define LA_DTYPE_CASE(CT, ST, NAME)            \
  if (dtype == at::k##ST) {                    \
    using T = CT;                              \
    LA_FOR_EACH_HEAD_DIM(LA_HEAD_DIM_CASE)     \
  }
  LA_FOR_EACH_DTYPE(LA_DTYPE_CASE)
#undef LA_DTYPE_CASE
#undef LA_HEAD_DIM_CASE
  TORCH_CHECK(false, "lightning_attention_C: no kernel compiled for ", dtype, " with D = E = ", hd,
              " (csrc/la_specs.h)");
}

}  // namespace

FwdParams fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& o, const float* slope, float scale, const float* state_in,
                     int64_t sd, int64_t se, float* state_out, const Plan& pl,
                     const at::Tensor* rq, float* terms, const float* dstate_f) {
  FwdParams p{};
  p.seg = pl.seg;
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.o = o.data_ptr();
  p.q_bs = q.stride(0); p.q_hs = q.stride(1); p.q_rs = q.stride(2);
  p.k_bs = k.stride(0); p.k_hs = k.stride(1); p.k_rs = k.stride(2);
  p.v_bs = v.stride(0); p.v_hs = v.stride(1); p.v_rs = v.stride(2);
  p.o_bs = o.stride(0); p.o_hs = o.stride(1); p.o_rs = o.stride(2);
  p.slope = slope;
  p.scale = scale;
  p.state_in = state_in; p.state_in_sd = sd; p.state_in_se = se;
  p.state_out = state_out;
  p.ws = pl.multi ? pl.ws.data_ptr<float>() : nullptr;
  p.ws_local = pl.multi ? pl.ws_local.data_ptr<float>() : nullptr;
  if (terms != nullptr) {
    p.rq = rq->data_ptr();
    p.rq_bs = rq->stride(0); p.rq_hs = rq->stride(1); p.rq_rs = rq->stride(2);
    p.dstate_f = dstate_f;
    TORCH_CHECK(!pl.multi || pl.ws_m.defined(), "lightning_attention_C: d slope terms need a plan "
                "with moments");
    p.ws_m = pl.multi ? pl.ws_m.data_ptr<float>() : nullptr;
    p.ws_m_local = pl.multi ? pl.ws_m_local.data_ptr<float>() : nullptr;
    p.terms = terms;
  }
  return p;
}

namespace {

// The passes of one sweep: when the plan has several segments per sequence and the incoming
// states are not given, pass 1 (the local state of each segment, or of each part of it, and
// with ws_m its moment, into the plan's ws_m_local) and the scan (incoming states, in sequence
// order or reversed, the first one being `state_in` with element strides (sd, se) at the rows
// `rows` names); then pass 2.
template <typename Pass>
void segment_passes(const Plan& pl, Pass&& pass, float* ws_m, const float* state_in, int64_t sd,
                    int64_t se, const StateRows& rows, const float* slope, int64_t D, int64_t E,
                    bool reverse, cudaStream_t stream, bool states_given = false) {
  if (pl.multi && !states_given) {
    pass(/*pass1=*/true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    run_state_scan(pl.seg, pl.ws_local.data_ptr<float>(), pl.ws.data_ptr<float>(), ws_m,
                   ws_m ? pl.ws_m_local.data_ptr<float>() : nullptr, state_in, sd, se, rows,
                   slope, (int)D, (int)E, reverse, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  pass(/*pass1=*/false);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_fwd_passes(const FwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                       const Plan& pl, cudaStream_t stream, bool states_given) {
  // The forward kernel: the sm_90a kernel (TMA, wgmma) on compute capability 9.0 when the
  // build has it; the mma.sync kernel otherwise, the dq sweep's d slope terms included (pass 1
  // with the moments, pass 2 with the terms). The mma.sync pass 1 takes whole segments (the
  // plan's parts == 1).
  TORCH_CHECK(pl.sm90 || pl.seg.parts == 1,
              "lightning_attention_C: this pass 1 takes whole segments");
  dispatch_kernel(dtype, D, [&](auto t, auto hd) {
    using T = typename decltype(t)::type;
    constexpr int kHD = decltype(hd)::value;
    auto pass = [&](bool pass1) {
      if (pl.sm90)
        run_fwd_sm90<T, kHD>(p, pass1, /*reverse=*/false, stream);
      else
        run_fwd<T, kHD>(p, pass1, pl.fwd_stages, stream);
    };
    segment_passes(pl, pass, p.ws_m, p.state_in, p.state_in_sd, p.state_in_se, p.state_rows,
                   p.slope, D, E, /*reverse=*/false, stream, states_given);
  });
}

void launch_reverse_sm90_passes(const FwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                                const Plan& pl, cudaStream_t stream) {
  dispatch_kernel(dtype, D, [&](auto t, auto hd) {
    using T = typename decltype(t)::type;
    constexpr int kHD = decltype(hd)::value;
    auto pass = [&](bool pass1) { run_fwd_sm90<T, kHD>(p, pass1, /*reverse=*/true, stream); };
    segment_passes(pl, pass, nullptr, p.state_in, p.state_in_sd, p.state_in_se, p.state_rows,
                   p.slope, D, E, /*reverse=*/true, stream);
  });
}

void launch_fused_bwd_sm90_passes(const BwdParams& p, const FwdParams& pdv, at::ScalarType dtype,
                                  int64_t D, int64_t E, const Plan& pl, cudaStream_t stream) {
  dispatch_kernel(dtype, D, [&](auto t, auto hd) {
    using T = typename decltype(t)::type;
    constexpr int kHD = decltype(hd)::value;
    auto pass = [&](bool pass1) {
      if (pass1)
        run_fwd_sm90<T, kHD>(pdv, /*pass1=*/true, /*reverse=*/true, stream);
      else
        run_bwd_sm90<T, kHD>(p, (int64_t)p.seg.num_segs * p.seg.H <= pl.sms, stream);
    };
    segment_passes(pl, pass, nullptr, p.dstate_in, E, 1, StateRows{}, p.slope, D, E,
                   /*reverse=*/true, stream);
  });
}

void launch_bwd_passes(const BwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                       const Plan& pl, cudaStream_t stream) {
  TORCH_CHECK(pl.seg.parts == 1, "lightning_attention_C: the mma.sync pass 1 takes whole segments");
  dispatch_kernel(dtype, D, [&](auto t, auto hd) {
    using T = typename decltype(t)::type;
    constexpr int kHD = decltype(hd)::value;
    auto pass = [&](bool pass1) { run_bwd<T, kHD>(p, pass1, stream); };
    segment_passes(pl, pass, nullptr, p.dstate_in, E, 1, StateRows{}, p.slope, D, E,
                   /*reverse=*/true, stream);
  });
}

}  // namespace la
