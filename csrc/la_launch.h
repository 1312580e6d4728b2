// Kernel launches: kernel parameters from tensors, the switch from (dtype, head dim) to the
// compiled kernels, and the order of the passes. Inputs are checked by la_ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include "la_params.h"
#include "la_plan.h"

namespace la {

// The forward's kernel parameters: o = forward(q, k, v) with the incoming state of each
// sequence read through (sd, se) strides (the dq sweep of the backward passes the transposed
// initial state). With `terms` (the dq sweep on (do, v, k), a plan made with moments), pass 2
// also writes the d slope terms τ_t per token from the real q `rq` and the final state's
// gradient `dstate_f` (or nullptr), read through (sd, se) like the initial state.
FwdParams fwd_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& o, const float* slope, float scale, const float* state_in,
                     int64_t sd, int64_t se, float* state_out, const Plan& pl,
                     const at::Tensor* rq = nullptr, float* terms = nullptr,
                     const float* dstate_f = nullptr);

// The forward's passes: pass 1 and the scan when the plan has several segments per
// sequence, then pass 2. The one place that chooses the forward kernel. `states_given`: p.ws
// holds every segment's incoming state already (the dq sweep on the forward's): pass 2 only.
void launch_fwd_passes(const FwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                       const Plan& pl, cudaStream_t stream, bool states_given = false);

// One gradient of the dk/dv sweep on the sm_90a kernel in reversed time (la_fwd_sm90.cuh:
// dV from (k, q, do), dK from (v, do, q)): pass 1 and the reverse scan when the plan has
// several segments, then pass 2. Only where the plan says sm90; no d slope terms.
void launch_reverse_sm90_passes(const FwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                                const Plan& pl, cudaStream_t stream);

// dk, dv and d initial_state in one sweep on the fused sm_90a kernel (la_bwd_sm90.cuh): when
// the plan has several segments, pass 1 of the dV product (`pdv`, the first of the two
// reversed passes above) and the reverse scan, then the fused pass 2. Only where the plan
// says sm90.
void launch_fused_bwd_sm90_passes(const BwdParams& p, const FwdParams& pdv, at::ScalarType dtype,
                                  int64_t D, int64_t E, const Plan& pl, cudaStream_t stream);

// dk, dv on the mma.sync kernel: the reverse sweep's pass 1 and scan when the plan has
// several segments, then pass 2.
void launch_bwd_passes(const BwdParams& p, at::ScalarType dtype, int64_t D, int64_t E,
                       const Plan& pl, cudaStream_t stream);

}  // namespace la
