// The ops lightning_attention_C::fwd, ::bwd, ::decode, ::pool_prefill, ::pool_decode:
// TORCH_LIBRARY schemas, output allocation in the caller's layout, and the Python module with
// build metadata.
//
// The Python package validates every call and answers empty inputs before it gets here
// (lightning_attention/checks.py, ops.py): the messages users read are written there. The
// guards below are for C++ callers and only keep the kernels from reading or writing out of
// bounds; they read shapes and dtypes, never data.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>
#endif

#include <cuda.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <tuple>

#include "la_launch.h"
#include "la_params.h"
#include "la_plan.h"
#include "la_specs.h"

#ifndef LA_CUDA_ARCHS
#define LA_CUDA_ARCHS "unknown"
#endif

namespace la {
namespace {

using at::Tensor;

#define LA_GUARD(cond, ...) TORCH_CHECK(cond, "lightning_attention_C: ", __VA_ARGS__)

// Tests only (tests/utils.py poisoned()): outputs start as NaN, so that an element a kernel
// forgets to write fails the comparison.
std::atomic<bool> g_poison_outputs{false};

Tensor new_output(at::IntArrayRef shape, const at::TensorOptions& opts) {
  Tensor t = at::empty(shape, opts);
  if (g_poison_outputs.load(std::memory_order_relaxed)) t.fill_(NAN);
  return t;
}

// "No state" (no final state asked for, no initial state, no d slope terms): an empty
// float32 tensor, as in the Python layer.
Tensor no_state(const Tensor& like) { return at::empty({0}, like.options().dtype(at::kFloat)); }

bool is_bnhd(const Tensor& x) { return x.stride(1) < x.stride(2); }

// A new (B, H, N, last) tensor laid out like x (BNHD memory when x is), as layout.py does.
Tensor output_like_layout(const Tensor& x, int64_t last) {
  if (is_bnhd(x))
    return new_output({x.size(0), x.size(2), x.size(1), last}, x.options()).transpose(1, 2);
  return new_output({x.size(0), x.size(1), x.size(2), last}, x.options());
}

// The kernels stage rows with 16-byte copies: the base pointer and every stride but the
// last must be multiples of 16 bytes, the last stride 1. Otherwise work on a copy.
Tensor aligned(const Tensor& t) {
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int i = 0; i + 1 < t.dim(); ++i) ok = ok && (t.size(i) == 1 || t.stride(i) % 8 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

std::optional<Tensor> contiguous(const std::optional<Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// q, k (B, H, N, D), v (B, H, N, E): one CUDA device and dtype, D = E, nothing empty.
void guard_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  LA_GUARD(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
           "q, k, v must be on one CUDA device");
  LA_GUARD(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.size(0) == q.size(0) &&
               v.size(1) == q.size(1) && v.size(2) == q.size(2) && v.size(3) == q.size(3),
           "q, k, v must be (B, H, N, D) with D = E (got ", q.sizes(), ", ", k.sizes(), ", ",
           v.sizes(), ")");
  LA_GUARD(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
           "q, k, v must have one dtype");
  LA_GUARD(q.numel() > 0, "empty inputs have no kernel (got ", q.sizes(), ")");
  LA_GUARD(q.size(2) < (int64_t(1) << 31), "N must be below 2^31");
}

// A float32 (n, H, D, E) state on q's device, or none.
void guard_state(const std::optional<Tensor>& s, int64_t n, int64_t H, int64_t D, int64_t E,
                 const Tensor& q) {
  if (!s.has_value()) return;
  LA_GUARD(s->device() == q.device() && s->scalar_type() == at::kFloat && s->dim() == 4 &&
               s->size(0) == n && s->size(1) == H && s->size(2) == D && s->size(3) == E,
           "states must be float32 (", n, ", ", H, ", ", D, ", ", E, ") on q's device (got ",
           s->scalar_type(), " ", s->sizes(), ")");
}

void guard_slope(const std::optional<Tensor>& slope, int64_t H, const Tensor& q) {
  if (!slope.has_value()) return;
  LA_GUARD(slope->device() == q.device() && slope->scalar_type() == at::kFloat &&
               slope->dim() == 1 && slope->size(0) == H,
           "slope must be float32 (H,) = (", H, ",) on q's device");
}

// The number of states: B, or the packed sequences of an int32 cu_seqlens (then B == 1).
int64_t guard_num_seqs(const Tensor& q, const std::optional<Tensor>& cu) {
  if (!cu.has_value()) return q.size(0);
  LA_GUARD(cu->device() == q.device() && cu->scalar_type() == at::kInt && cu->dim() == 1 &&
               cu->size(0) >= 2 && q.size(0) == 1,
           "cu_seqlens must be int32 (num_seqs + 1,) with num_seqs >= 1 on q's device, and B == 1");
  return cu->size(0) - 1;
}

// The incoming states of a plan's segments that the forward keeps for the dq sweep of its
// backward (la_bwd): the plan's ws, (num_segs, H, D, E), when the sm_90a kernels run a
// multi-segment plan; else none, (0, H, D, E). One D×E state per segment and head, and the
// plan keeps segments × heads near one wave of CTAs: megabytes where K, V are gigabytes.
Tensor kept_states(const Plan& pl, const Tensor& q, int64_t H, int64_t D, int64_t E) {
  if (pl.multi && pl.sm90) return pl.ws;
  return at::empty({0, H, D, E}, q.options().dtype(at::kFloat));
}

// o = forward(q, k, v) with each sequence's state read from `state_in` and its final state
// written to `state_out` (either nullptr: none) at the rows `rows` names, and the states the
// backward may reuse (kept_states). The one launch of fwd and pool_prefill.
std::tuple<Tensor, Tensor> forward(const Tensor& q_, const Tensor& k_, const Tensor& v_,
               const std::optional<Tensor>& slope, double scale,
               const std::optional<Tensor>& cu_seqlens, int64_t num_seqs, const float* state_in,
               float* state_out, const StateRows& rows, std::optional<int64_t> seg_len) {
  const int64_t D = q_.size(3), E = v_.size(3);
  c10::cuda::CUDAGuard device(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor o = output_like_layout(q_, E);
  const auto slope_c = contiguous(slope), cu = contiguous(cu_seqlens);
  const Tensor q = aligned(q_), k = aligned(k_), v = aligned(v_);
  const Plan pl = make_plan(q, cu, num_seqs, D, E, seg_len, slope.has_value(), stream);
  FwdParams p = fwd_params(q, k, v, o, ptr_or_null<float>(slope_c), (float)scale, state_in, E, 1,
                           state_out, pl);
  p.state_rows = rows;
  launch_fwd_passes(p, q.scalar_type(), D, E, pl, stream);
  return {o, kept_states(pl, q, q.size(1), D, E)};
}

std::tuple<Tensor, Tensor, Tensor> la_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const std::optional<Tensor>& slope, double scale,
                                  const std::optional<Tensor>& initial_state,
                                  const std::optional<Tensor>& cu_seqlens, bool output_final_state,
                                  std::optional<int64_t> seg_len) {
  guard_qkv(q, k, v);
  const int64_t H = q.size(1), D = q.size(3), E = v.size(3);
  const int64_t num_seqs = guard_num_seqs(q, cu_seqlens);
  guard_slope(slope, H, q);
  guard_state(initial_state, num_seqs, H, D, E, q);
  Tensor final_state = output_final_state
                           ? new_output({num_seqs, H, D, E}, q.options().dtype(at::kFloat))
                           : no_state(q);
  const auto init = contiguous(initial_state);
  auto [o, kept] = forward(q, k, v, slope, scale, cu_seqlens, num_seqs, ptr_or_null<float>(init),
                           output_final_state ? final_state.data_ptr<float>() : nullptr,
                           StateRows{}, seg_len);
  return {o, final_state, kept};
}

// A float32 (num_slots, H, D, E) pool, contiguous (its rows are updated in place), and int32
// slots (n,) on q's device. Slot values are checked in Python (checks.py); here a slot
// outside [0, num_slots) reads and writes nothing.
void guard_pool(const Tensor& pool, const Tensor& slots, int64_t n, int64_t H, int64_t D,
                int64_t E, const Tensor& q) {
  LA_GUARD(pool.device() == q.device() && pool.scalar_type() == at::kFloat && pool.dim() == 4 &&
               pool.size(1) == H && pool.size(2) == D && pool.size(3) == E &&
               pool.is_contiguous() && pool.size(0) < (int64_t(1) << 31),
           "state_pool must be float32 (num_slots, H, D, E) = (·, ", H, ", ", D, ", ", E,
           "), contiguous, on q's device (got ", pool.scalar_type(), " ", pool.sizes(), ")");
  LA_GUARD(slots.device() == q.device() && slots.scalar_type() == at::kInt && slots.dim() == 1 &&
               slots.size(0) == n,
           "slots must be int32 (", n, ",) on q's device (got ", slots.scalar_type(), " ",
           slots.sizes(), ")");
}

// serving.prefill: the varlen forward in which sequence i starts from state_pool[slots[i]]
// where has_state[i] (else from 0) and ends there, in place.
Tensor la_pool_prefill(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::optional<Tensor>& slope, double scale, const Tensor& cu_seqlens,
                       Tensor& state_pool, const Tensor& slots,
                       const std::optional<Tensor>& has_state, std::optional<int64_t> seg_len) {
  guard_qkv(q, k, v);
  const int64_t H = q.size(1), D = q.size(3), E = v.size(3);
  const int64_t num_seqs = guard_num_seqs(q, cu_seqlens);
  guard_slope(slope, H, q);
  guard_pool(state_pool, slots, num_seqs, H, D, E, q);
  if (has_state.has_value())
    LA_GUARD(has_state->device() == q.device() && has_state->scalar_type() == at::kBool &&
                 has_state->dim() == 1 && has_state->size(0) == num_seqs,
             "has_state must be bool (", num_seqs, ",) on q's device (got ",
             has_state->scalar_type(), " ", has_state->sizes(), ")");
  const Tensor slots_c = slots.contiguous();
  const auto has_c = contiguous(has_state);
  const StateRows rows{slots_c.data_ptr<int>(), ptr_or_null<bool>(has_c),
                       (int)state_pool.size(0)};
  float* pool = state_pool.data_ptr<float>();
  return std::get<0>(forward(q, k, v, slope, scale, cu_seqlens, num_seqs,
                             has_c.has_value() ? pool : nullptr, pool, rows, seg_len));
}

// Returns (dq, dk, dv, d initial_state or empty, d slope terms or empty). The terms
// (B, H, N) float32 are the per-token terms τ_t of d log λ in the direct form, final-state
// term included (each sequence's sum is its d log λ; ops.py sums them into d slope): the
// dq sweep computes them from fp32 tiles, its fp32 state and moment, and weighted operands
// split into two 16-bit parts (la_fwd_kernel.cuh), so that d slope of 16-bit inputs does not
// lose accuracy with the sequence's length. `kept`: the forward's third output (kept_states);
// when it holds states, the dq sweep starts its segments from them instead of running its own
// pass 1 and scan over v, k (dq_t = scale · do_t S_tᵀ: S_t is the forward's state), except with
// the d slope terms, whose sweep carries moments beside its states.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> la_bwd(
    const Tensor& dout_, const std::optional<Tensor>& dfinal_state, const Tensor& q_,
    const Tensor& k_, const Tensor& v_, const std::optional<Tensor>& slope, double scale,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens,
    bool need_dslope, const std::optional<Tensor>& kept, std::optional<int64_t> seg_len) {
  guard_qkv(q_, k_, v_);
  const int64_t H = q_.size(1), N = q_.size(2), D = q_.size(3), E = v_.size(3);
  LA_GUARD(dout_.device() == q_.device() && dout_.scalar_type() == q_.scalar_type() &&
               dout_.sizes() == v_.sizes(),
           "dout must be like the output (B, H, N, E) (got ", dout_.sizes(), ")");
  const int64_t num_seqs = guard_num_seqs(q_, cu_seqlens);
  guard_slope(slope, H, q_);
  guard_state(initial_state, num_seqs, H, D, E, q_);
  guard_state(dfinal_state, num_seqs, H, D, E, q_);
  c10::cuda::CUDAGuard device(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  Tensor dq = output_like_layout(q_, D);
  Tensor dk = output_like_layout(k_, D);
  Tensor dv = output_like_layout(v_, E);
  const auto f32 = q_.options().dtype(at::kFloat);
  Tensor dinit = initial_state.has_value() ? new_output({num_seqs, H, D, E}, f32) : no_state(q_);
  // zeroed: tokens outside every sequence of cu_seqlens get no term; the dq sweep writes the rest
  Tensor terms = need_dslope ? at::zeros({q_.size(0), H, N}, f32) : no_state(q_);
  const auto init = contiguous(initial_state), dfinal = contiguous(dfinal_state),
             slope_c = contiguous(slope), cu = contiguous(cu_seqlens);
  const Tensor q = aligned(q_), k = aligned(k_), v = aligned(v_), dout = aligned(dout_);
  const Plan pl = make_plan(q, cu, num_seqs, D, E, seg_len, slope.has_value(), stream,
                            /*moments=*/need_dslope);
  const float* slope_p = ptr_or_null<float>(slope_c);
  const bool reuse = kept.has_value() && kept->numel() > 0 && !need_dslope;
  if (reuse)
    LA_GUARD(pl.multi && pl.sm90 && kept->device() == q_.device() &&
                 kept->scalar_type() == at::kFloat && kept->is_contiguous() &&
                 kept->sizes() == at::IntArrayRef({pl.seg.num_segs, H, D, E}),
             "the forward's kept states do not match this call's plan (got ", kept->sizes(), ")");

  // dq_t = scale · do_t S_tᵀ: the forward on (do, v, k) with the transposed initial state
  // (and the transposed final state's gradient for the d slope terms), from the forward's
  // segment states, transposed, when it kept them.
  FwdParams pq = fwd_params(dout, v, k, dq, slope_p, (float)scale, ptr_or_null<float>(init),
                            /*sd=*/1, /*se=*/E, nullptr, pl, &q,
                            need_dslope ? terms.data_ptr<float>() : nullptr,
                            ptr_or_null<float>(dfinal));
  if (reuse) {
    pq.ws = kept->data_ptr<float>();
    pq.ws_transposed = true;
  }
  launch_fwd_passes(pq, q.scalar_type(), D, E, pl, stream, /*states_given=*/reuse);

  // The dk/dv sweep carries no moments: with the d slope terms its pass 1 is laid out as the
  // fixed-slope backward's (up to the decay horizon, in parts), not as the dq sweep's, unless
  // LIGHTNING_ATTENTION_DSLOPE_PLANS=0.
  std::optional<Plan> own;
  if (need_dslope && pl.sm90 && sm90_dslope_plans())
    own = without_moments(pl, q, D, E, slope.has_value());
  const Plan& pk = own ? *own : pl;

  // dv_t = k_t G_t and dk_t = v_t G_tᵀ on sm_90a: the kernel in reversed time on (k, q, do)
  // with the final state's gradient (its last state is the initial state's gradient) ...
  const float* dfin = ptr_or_null<float>(dfinal);
  float* dinit_p = initial_state.has_value() ? dinit.data_ptr<float>() : nullptr;
  const FwdParams pdv = fwd_params(k, q, dout, dv, slope_p, (float)scale, dfin, /*sd=*/E, /*se=*/1,
                                   dinit_p, pk);
  if (pk.sm90 && !sm90_fused_bwd()) {
    // ... and on (v, do, q) with that gradient transposed
    launch_reverse_sm90_passes(pdv, q.scalar_type(), D, E, pk, stream);
    launch_reverse_sm90_passes(
        fwd_params(v, dout, q, dk, slope_p, (float)scale, dfin, /*sd=*/1, /*se=*/E, nullptr, pk),
        q.scalar_type(), D, E, pk, stream);
    return {dq, dk, dv, dinit, terms};
  }

  BwdParams p{};
  p.seg = pk.seg;
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.dout = dout.data_ptr();
  p.dk = dk.data_ptr(); p.dv = dv.data_ptr();
  p.q_bs = q.stride(0); p.q_hs = q.stride(1); p.q_rs = q.stride(2);
  p.k_bs = k.stride(0); p.k_hs = k.stride(1); p.k_rs = k.stride(2);
  p.v_bs = v.stride(0); p.v_hs = v.stride(1); p.v_rs = v.stride(2);
  p.do_bs = dout.stride(0); p.do_hs = dout.stride(1); p.do_rs = dout.stride(2);
  p.dk_bs = dk.stride(0); p.dk_hs = dk.stride(1); p.dk_rs = dk.stride(2);
  p.dv_bs = dv.stride(0); p.dv_hs = dv.stride(1); p.dv_rs = dv.stride(2);
  p.slope = slope_p;
  p.scale = (float)scale;
  p.dstate_in = dfin;
  p.dstate_out = dinit_p;
  p.ws = pk.multi ? pk.ws.data_ptr<float>() : nullptr;
  if (pk.sm90) {  // ... or both products in one sweep (the fused kernel)
    launch_fused_bwd_sm90_passes(p, pdv, q.scalar_type(), D, E, pk, stream);
    return {dq, dk, dv, dinit, terms};
  }
  launch_bwd_passes(p, q.scalar_type(), D, E, pk, stream);
  return {dq, dk, dv, dinit, terms};
}

// q, k (B, H, D), v (B, H, E) for one decode step: one CUDA device and dtype, D, E <= 256,
// E % 4 == 0 (the state streams as float4 rows).
void guard_decode_inputs(const Tensor& q, const Tensor& k, const Tensor& v) {
  LA_GUARD(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
           "decode: q, k, v must be on one CUDA device");
  LA_GUARD(q.dim() == 3 && k.sizes() == q.sizes() && v.dim() == 3 && v.size(0) == q.size(0) &&
               v.size(1) == q.size(1),
           "decode: q, k must be (B, H, D) and v (B, H, E) (got ", q.sizes(), ", ", k.sizes(),
           ", ", v.sizes(), ")");
  const auto dt = q.scalar_type();
  LA_GUARD((dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16) &&
               k.scalar_type() == dt && v.scalar_type() == dt,
           "decode: q, k, v must be one of float16, bfloat16, float32");
  const int64_t D = q.size(2), E = v.size(2);
  LA_GUARD(q.size(0) * q.size(1) > 0 && D > 0 && D <= 256 && E > 0 && E <= 256 && E % 4 == 0,
           "decode: B, H > 0, D, E in [1, 256] and E % 4 == 0 (got D = ", D, ", E = ", E, ")");
}

// One decode step on `state` (n, H, D, E), float32, contiguous, at the rows `slots` names
// (nullptr: row b).
Tensor decode_step(const Tensor& q_, const Tensor& k_, const Tensor& v_, Tensor& state,
                   const int* slots, const std::optional<Tensor>& slope, double scale) {
  const int64_t B = q_.size(0), H = q_.size(1), D = q_.size(2), E = v_.size(2);
  LA_GUARD(reinterpret_cast<uintptr_t>(state.data_ptr()) % 16 == 0,
           "decode: the state must be 16-byte aligned");
  guard_slope(slope, H, q_);
  c10::cuda::CUDAGuard device(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor o = new_output({B, H, E}, q_.options());
  const Tensor q = q_.stride(-1) == 1 ? q_ : q_.contiguous();
  const Tensor k = k_.stride(-1) == 1 ? k_ : k_.contiguous();
  const Tensor v = v_.stride(-1) == 1 ? v_ : v_.contiguous();
  const auto slope_c = contiguous(slope);
  DecodeParams p{};
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.o = o.data_ptr();
  p.q_bs = q.stride(0); p.q_hs = q.stride(1);
  p.k_bs = k.stride(0); p.k_hs = k.stride(1);
  p.v_bs = v.stride(0); p.v_hs = v.stride(1);
  p.state = state.data_ptr<float>();
  p.rows = StateRows{slots, nullptr, (int)state.size(0)};
  p.slope = ptr_or_null<float>(slope_c);
  p.scale = (float)scale;
  p.B = (int)B; p.H = (int)H; p.D = (int)D; p.E = (int)E;
  const DeviceInfo& dev = device_info(q_.get_device());
  p.sms = dev.sms;
  p.cc_major = dev.cc_major;
  const auto dt = q.scalar_type();
  const int dtype = dt == at::kFloat ? 0 : (dt == at::kHalf ? 1 : 2);
  run_decode(p, dtype, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return o;
}

Tensor la_decode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& state,
                 const std::optional<Tensor>& slope, double scale) {
  guard_decode_inputs(q, k, v);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), E = v.size(2);
  LA_GUARD(state.device() == q.device() && state.scalar_type() == at::kFloat &&
               state.dim() == 4 && state.size(0) == B && state.size(1) == H &&
               state.size(2) == D && state.size(3) == E && state.is_contiguous(),
           "decode: state must be float32 (B, H, D, E) = (", B, ", ", H, ", ", D, ", ", E,
           "), contiguous, on q's device (got ", state.scalar_type(), " ", state.sizes(), ")");
  return decode_step(q, k, v, state, nullptr, slope, scale);
}

// serving.decode: state_pool[slots[b]] is row b's state; a slot outside [0, num_slots) is a
// padding row (o[b] = 0, no state read or written).
Tensor la_pool_decode(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& state_pool,
                      const Tensor& slots, const std::optional<Tensor>& slope, double scale) {
  guard_decode_inputs(q, k, v);
  guard_pool(state_pool, slots, q.size(0), q.size(1), q.size(2), v.size(2), q);
  const Tensor slots_c = slots.contiguous();
  return decode_step(q, k, v, state_pool, slots_c.data_ptr<int>(), slope, scale);
}

}  // namespace
}  // namespace la

// seg_len: a forced segment length (tests take both the single- and multi-segment paths);
// None plans it from the shape and the device. fwd's third output is what bwd takes as `kept`
// (la_bwd): its first dimension depends on the device's plan.
TORCH_LIBRARY(lightning_attention_C, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? slope, float scale, Tensor? initial_state, "
      "Tensor? cu_seqlens, bool output_final_state, int? seg_len=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor? dfinal_state, Tensor q, Tensor k, Tensor v, Tensor? slope, "
      "float scale, Tensor? initial_state, Tensor? cu_seqlens, bool need_dslope, "
      "Tensor? kept=None, int? seg_len=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("decode(Tensor q, Tensor k, Tensor v, Tensor(a!) state, Tensor? slope, float scale) -> Tensor");
  // serving: states in a pool addressed by slot, updated in place
  m.def(
      "pool_prefill(Tensor q, Tensor k, Tensor v, Tensor? slope, float scale, Tensor cu_seqlens, "
      "Tensor(a!) state_pool, Tensor slots, Tensor? has_state, int? seg_len=None) -> Tensor");
  m.def(
      "pool_decode(Tensor q, Tensor k, Tensor v, Tensor(a!) state_pool, Tensor slots, "
      "Tensor? slope, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lightning_attention_C, CUDA, m) {
  m.impl("fwd", &la::la_fwd);
  m.impl("bwd", &la::la_bwd);
  m.impl("decode", &la::la_decode);
  m.impl("pool_prefill", &la::la_pool_prefill);
  m.impl("pool_decode", &la::la_pool_decode);
}

#ifdef TORCH_EXTENSION_NAME
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lightning_attention CUDA kernels (ops under torch.ops.lightning_attention_C)";
  m.attr("cuda_version") = CUDA_VERSION;
  m.attr("cuda_archs") = LA_CUDA_ARCHS;
  // What the kernels are compiled for (la_specs.h): head dims (D = E), dtypes, and the
  // shared memory per block that every op needs at each head dim.
  pybind11::list head_dims, dtypes;
  pybind11::dict smem;
#define LA_EXPORT_HEAD_DIM(D)                                              \
  head_dims.append(D);                                                     \
  smem[pybind11::int_(D)] = std::max({la::TileShape<D>::kSmemBwdPass2,    \
                                      la::TileShape<D>::smem_fwd_pass2(2), \
                                      la::TileShape<D>::kSmemFwdSlopePass2});
#define LA_EXPORT_DTYPE(CT, ST, NAME) dtypes.append(NAME);
  LA_FOR_EACH_HEAD_DIM(LA_EXPORT_HEAD_DIM)
  LA_FOR_EACH_DTYPE(LA_EXPORT_DTYPE)
#undef LA_EXPORT_HEAD_DIM
#undef LA_EXPORT_DTYPE
  m.attr("head_dims") = pybind11::tuple(head_dims);
  m.attr("dtypes") = pybind11::tuple(dtypes);
  m.attr("smem_bytes") = smem;
  m.def("set_poison_outputs", [](bool on) { la::g_poison_outputs = on; },
        "Tests only: the ops' outputs start as NaN while on.");
}
#endif
