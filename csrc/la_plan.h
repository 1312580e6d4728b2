// Segment planning: how the tokens of each (sequence, head) are cut into segments, one CTA
// each, the varlen table, the forward's pipeline depth and the workspace of per-segment states.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>

#include "la_params.h"

namespace la {

struct DeviceInfo {
  int sms = 0, smem_optin = 0, cc_major = 0, cc_minor = 0;
};
// Device attributes, queried once per device (never on every call).
const DeviceInfo& device_info(int dev);

struct Plan {
  SegParams seg{};
  at::Tensor seq_info, seg_seq, ws;
  at::Tensor ws_local;  // with several segments: pass 1's local states per (segment part,
                        // head) when seg.parts > 1, else ws itself
  at::Tensor ws_m;     // with moments and several segments: per-segment moments, like ws
  at::Tensor ws_m_local;  // and pass 1's local moments, like ws_local
  bool multi = false;  // some sequence has more than one segment: pass 1 and the scan run
  int fwd_stages = 2;  // cp.async pipeline depth of the forward's pass 2 (2 or 3)
  int cc_major = 0, cc_minor = 0;  // the device's compute capability
  int sms = 0;                     // and its SM count
  bool sm90 = false;  // the sm_90a kernels (la_fwd_sm90.cuh) run the forward and the sweeps
};

// `seg_len`: a forced segment length (a positive multiple of 64; tests use it to take the
// single- and multi-segment paths), or nullopt to plan it. `decay`: the call has slopes.
// `moments`: the dq sweep carries d slope moments beside its states. Reads the device's
// properties once per device and caches them.
Plan make_plan(const at::Tensor& q, const std::optional<at::Tensor>& cu, int64_t num_seqs,
               int64_t D, int64_t E, std::optional<int64_t> seg_len, bool decay,
               cudaStream_t stream, bool moments = false);

// The plan `pl` (made with moments) for a sweep without them, e.g. the dk/dv sweep beside the
// d slope dq sweep: the same segments, varlen table and ws (the sweeps run one after the other
// on one stream), pass 1's own horizon, parts and local workspace.
Plan without_moments(const Plan& pl, const at::Tensor& q, int64_t D, int64_t E, bool decay);

}  // namespace la
