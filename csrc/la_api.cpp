// Host side of the CUDA backend: checks, output allocation in the caller's layout, the
// segmentation plan, kernel launches, and the TORCH_LIBRARY registration of
//   lightning_attention_C::fwd, ::bwd, ::decode
// plus a small Python module with build metadata.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>
#endif

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <optional>
#include <tuple>

#include "la_params.h"

#ifndef LA_CUDA_ARCHS
#define LA_CUDA_ARCHS "unknown"
#endif

namespace la {
namespace {

using at::Tensor;

#define LA_CHECK(cond, ...) TORCH_CHECK(cond, "lightning_attn (cuda): ", __VA_ARGS__)

constexpr int kMaxSegLen = 2048;
constexpr int kMinSegLen = 128;

// Tests set LIGHTNING_ATTENTION_POISON=1 (layout.poisoned()): outputs start as NaN, so an
// element a kernel forgets to write fails the comparison.
bool poison() {
  const char* e = std::getenv("LIGHTNING_ATTENTION_POISON");
  return e != nullptr && e[0] == '1';
}

bool is_bnhd(const Tensor& x) { return x.dim() == 4 && x.stride(1) < x.stride(2); }

// A new (B, H, N, last) tensor laid out like x (BNHD memory when x is), as layout.py does.
Tensor empty_like_layout(const Tensor& x, int64_t last, at::ScalarType dtype) {
  const auto opts = x.options().dtype(dtype);
  if (is_bnhd(x))
    return at::empty({x.size(0), x.size(2), x.size(1), last}, opts).transpose(1, 2);
  return at::empty({x.size(0), x.size(1), x.size(2), last}, opts);
}

// The kernels stage rows with 16-byte copies: the base pointer and every stride but the
// last must be multiples of 16 bytes, the last stride 1. Otherwise work on a copy.
Tensor aligned(const Tensor& t) {
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int i = 0; i + 1 < t.dim(); ++i) ok = ok && (t.size(i) == 1 || t.stride(i) % 8 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  LA_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "q, k, v must be CUDA tensors");
  LA_CHECK(k.device() == q.device() && v.device() == q.device(),
           "q, k, v must be on one device (got ", q.device(), ", ", k.device(), ", ", v.device(), ")");
  LA_CHECK(q.dim() == 4, "q must be (B, H, N, D) (got ", q.dim(), " dims)");
  LA_CHECK(k.dim() == 4, "k must be (B, H, N, D) (got ", k.dim(), " dims)");
  LA_CHECK(v.dim() == 4, "v must be (B, H, N, E) (got ", v.dim(), " dims)");
  const auto dt = q.scalar_type();
  LA_CHECK(dt == at::kBFloat16 || dt == at::kHalf,
           "q must be float16 or bfloat16 for the CUDA kernels (got ", dt, ")");
  LA_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, "k and v must have q's dtype ", dt,
           " (got ", k.scalar_type(), ", ", v.scalar_type(), ")");
  for (int i = 0; i < 3; ++i) {
    LA_CHECK(k.size(i) == q.size(i), "k must have the same (B, H, N) as q (got ", k.sizes(),
             " vs ", q.sizes(), ")");
    LA_CHECK(v.size(i) == q.size(i), "v must have the same (B, H, N) as q (got ", v.sizes(),
             " vs ", q.sizes(), ")");
  }
  LA_CHECK(k.size(3) == q.size(3), "k must have q's head dim D (got ", k.size(3), " vs ",
           q.size(3), ")");
  const int64_t D = q.size(3), E = v.size(3);
  LA_CHECK(D == E && (D == 64 || D == 128),
           "the CUDA kernels are specialised for D = E in {64, 128} (got D = ", D, ", E = ", E, ")");
  LA_CHECK(q.size(2) < (int64_t(1) << 31), "N must be below 2^31 (got ", q.size(2), ")");
}

void check_state(const std::optional<Tensor>& s, const char* name, int64_t num_seqs, int64_t H,
                 int64_t D, int64_t E, const Tensor& q) {
  if (!s.has_value()) return;
  const Tensor& t = *s;
  LA_CHECK(t.device() == q.device(), name, " must be on q's device ", q.device(), " (got ",
           t.device(), ")");
  LA_CHECK(t.scalar_type() == at::kFloat, name, " must be float32 (got ", t.scalar_type(), ")");
  LA_CHECK(t.dim() == 4 && t.size(0) == num_seqs && t.size(1) == H && t.size(2) == D &&
               t.size(3) == E,
           name, " must be (", num_seqs, ", ", H, ", ", D, ", ", E, ") (got ", t.sizes(), ")");
}

void check_slope(const std::optional<Tensor>& slope, int64_t H, const Tensor& q) {
  if (!slope.has_value()) return;
  LA_CHECK(slope->device() == q.device(), "slope must be on q's device ", q.device(), " (got ",
           slope->device(), ")");
  LA_CHECK(slope->scalar_type() == at::kFloat, "slope must be float32 (got ", slope->scalar_type(), ")");
  LA_CHECK(slope->dim() == 1 && slope->size(0) == H, "slope must be (H,) = (", H, ",) (got ",
           slope->sizes(), ")");
}

int64_t num_seqs_of(const Tensor& q, const std::optional<Tensor>& cu) {
  if (!cu.has_value()) return q.size(0);
  LA_CHECK(cu->device() == q.device(), "cu_seqlens must be on q's device ", q.device(),
           " (got ", cu->device(), ")");
  LA_CHECK(cu->scalar_type() == at::kInt, "cu_seqlens must be int32 (got ", cu->scalar_type(), ")");
  LA_CHECK(cu->dim() == 1 && cu->size(0) >= 1, "cu_seqlens must be (num_seqs + 1,) (got ",
           cu->sizes(), ")");
  LA_CHECK(q.size(0) == 1, "with cu_seqlens, B must be 1 (got B = ", q.size(0), ")");
  return cu->size(0) - 1;
}

// Segmentation. Pass 2 runs one CTA per SM, so its time is (waves) x (blocks per segment);
// more segments fill the machine but add pass 1 (K, V read once more, two CTAs per SM,
// about 0.77 of a pass-2 block each, measured on an H100) and the scan. Pick the segment
// length with the least modelled time, preferring longer segments (fewer states) on ties.
// W on an H100: N <= 16K -> one segment per sequence; N = 32K, 64K -> 4K, 8K-token segments.
int pick_seg_len(int64_t rows, int64_t N, int sms) {
  auto cost = [&](int64_t L) {
    const int64_t nseg = (N + L - 1) / L, blocks = (L + 63) / 64;
    double c = (double)((rows * nseg + sms - 1) / sms) * blocks;
    if (nseg > 1)  // pass 1, the scan, and ~4 blocks' worth of state traffic per segment
      c += (double)((rows * (nseg - 1) + 2 * sms - 1) / (2 * sms)) * blocks * 0.77 + 10.0 +
           4.0 * rows * nseg / sms;
    return c;
  };
  int64_t best = std::max<int64_t>(64, (N + 63) / 64 * 64);
  double best_cost = cost(best);
  for (int64_t L = int64_t(1) << 30; L >= kMinSegLen; L /= 2) {
    if (L >= N) continue;
    const double c = cost(L);
    if (c < best_cost * 0.98) {
      best = L;
      best_cost = c;
    }
  }
  return (int)std::min<int64_t>(best, int64_t(1) << 30);
}

struct Plan {
  SegParams seg{};
  Tensor seq_info, seg_seq, ws;
  bool multi = false;  // some sequence has more than one segment: pass 1 and the scan run
  int fwd_stages = 2;
};

Plan make_plan(const Tensor& q, const std::optional<Tensor>& cu, int64_t num_seqs, int64_t D,
               int64_t E, cudaStream_t stream) {
  Plan pl;
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
  int sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        q.get_device()));
  // forward pass-2 pipeline depth: 3 stages where shared memory allows (Hopper), else 2
  const int64_t stride = D + 8;
  pl.fwd_stages = (3 * 3 * 64 * stride + D * stride) * 2 + 512 <= smem_optin ? 3 : 2;
  if (const char* e = std::getenv("LIGHTNING_ATTENTION_FWD_STAGES")) {  // tuning experiments
    const int want = std::atoi(e);
    if (want == 2 || want == 3) pl.fwd_stages = std::min(pl.fwd_stages, want);
  }
  int L;
  if (cu.has_value()) {  // packed sequences of unknown lengths: the longest segment
    // (<= kMaxSegLen) that gives four CTAs per SM if the tokens formed one sequence
    L = kMaxSegLen;
    while (L > kMinSegLen && H * ((N + L - 1) / L) < 4 * sms) L /= 2;
  } else {
    L = pick_seg_len(B * H, N, sms);
  }
  if (const char* e = std::getenv("LIGHTNING_ATTENTION_SEG_LEN")) {  // tuning experiments
    const int want = std::atoi(e);
    if (want >= 64 && want % 64 == 0) L = want;
  }
  pl.seg.B = (int)B;
  pl.seg.H = (int)H;
  pl.seg.N = (int)N;
  pl.seg.num_seqs = (int)num_seqs;
  pl.seg.seg_len = L;
  if (!cu.has_value()) {
    pl.seg.segs_per_seq = (int)std::max<int64_t>(1, (N + L - 1) / L);
    pl.seg.num_segs = (int)(B * pl.seg.segs_per_seq);
    pl.multi = pl.seg.segs_per_seq > 1;
  } else {
    pl.seg.segs_per_seq = 0;
    pl.seg.num_segs = (int)((N + L - 1) / L + num_seqs);
    pl.multi = N > L;
    pl.seq_info = at::empty({num_seqs, 4}, q.options().dtype(at::kInt));
    pl.seg_seq = at::empty({pl.seg.num_segs}, q.options().dtype(at::kInt));
    run_varlen_plan(cu->data_ptr<int>(), (int)num_seqs, (int)N, L, pl.seg.num_segs,
                    pl.seq_info.data_ptr<int>(), pl.seg_seq.data_ptr<int>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pl.seg.seq_info = pl.seq_info.data_ptr<int>();
    pl.seg.seg_seq = pl.seg_seq.data_ptr<int>();
  }
  if (pl.multi) pl.ws = at::empty({pl.seg.num_segs, H, D, E}, q.options().dtype(at::kFloat));
  return pl;
}

#define LA_DISPATCH(DTYPE, HDIM, ...)                                         \
  [&] {                                                                       \
    if ((DTYPE) == at::kBFloat16) {                                           \
      using T = __nv_bfloat16;                                                \
      if ((HDIM) == 64) { constexpr int kHD = 64; __VA_ARGS__(); }            \
      else { constexpr int kHD = 128; __VA_ARGS__(); }                        \
    } else {                                                                  \
      using T = __half;                                                       \
      if ((HDIM) == 64) { constexpr int kHD = 64; __VA_ARGS__(); }            \
      else { constexpr int kHD = 128; __VA_ARGS__(); }                        \
    }                                                                         \
  }()

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// o = forward(q, k, v) with the incoming state of each sequence read through (sd, se)
// strides (the dq sweep passes the transposed initial state).
void fwd_core(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
              const float* slope, float scale, const float* state_in, int64_t sd, int64_t se,
              float* state_out, Plan& pl, cudaStream_t stream, const Tensor* rq = nullptr,
              float* terms = nullptr) {
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
  if (terms != nullptr) {
    p.rq = rq->data_ptr();
    p.rq_bs = rq->stride(0); p.rq_hs = rq->stride(1); p.rq_rs = rq->stride(2);
    p.terms = terms;
  }
  const int64_t D = q.size(3), E = v.size(3);
  const bool sm90 = terms == nullptr && sm90_enabled(q.get_device());
  LA_DISPATCH(q.scalar_type(), D, [&] {
    auto pass = [&](bool pass1) {
      if (sm90)
        run_fwd_sm90<T, kHD>(p, pass1, stream);
      else
        run_fwd<T, kHD>(p, pass1, pl.fwd_stages, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pl.multi) {
      pass(/*pass1=*/true);
      run_state_scan(pl.seg, p.ws, state_in, sd, se, slope, (int)D, (int)E, /*reverse=*/false, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    pass(/*pass1=*/false);
  });
}

std::tuple<Tensor, Tensor> la_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                  const std::optional<Tensor>& slope, double scale,
                                  const std::optional<Tensor>& initial_state,
                                  const std::optional<Tensor>& cu_seqlens, bool output_final_state) {
  check_qkv(q_, k_, v_);
  const int64_t H = q_.size(1), N = q_.size(2), D = q_.size(3), E = v_.size(3);
  const int64_t num_seqs = num_seqs_of(q_, cu_seqlens);
  check_slope(slope, H, q_);
  check_state(initial_state, "initial_state", num_seqs, H, D, E, q_);
  c10::cuda::CUDAGuard guard(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  Tensor o = empty_like_layout(q_, E, q_.scalar_type());
  Tensor final_state = at::empty({output_final_state ? num_seqs : 0, H, D, E},
                                 q_.options().dtype(at::kFloat));
  if (poison()) {
    o.fill_(NAN);
    final_state.fill_(NAN);
  }
  std::optional<Tensor> init;
  if (initial_state.has_value()) init = initial_state->contiguous();
  if (num_seqs == 0 || H == 0) return {o, final_state};
  if (N == 0) {
    if (output_final_state) {
      if (init.has_value()) final_state.copy_(*init);
      else final_state.zero_();
    }
    return {o, final_state};
  }
  const Tensor q = aligned(q_), k = aligned(k_), v = aligned(v_);
  std::optional<Tensor> slope_c;
  if (slope.has_value()) slope_c = slope->contiguous();
  std::optional<Tensor> cu;
  if (cu_seqlens.has_value()) cu = cu_seqlens->contiguous();
  Plan pl = make_plan(q, cu, num_seqs, D, E, stream);
  fwd_core(q, k, v, o, ptr_or_null<float>(slope_c), (float)scale, ptr_or_null<float>(init), E, 1,
           output_final_state ? final_state.data_ptr<float>() : nullptr, pl, stream);
  return {o, final_state};
}

// Returns (dq, dk, dv, d initial_state or empty, d slope terms or empty). The terms
// (B, H, N) float32 are q_t·dq_t − k_t·dk_t from the unrounded float32 gradients (ops.py
// turns them into d slope); computing them from the 16-bit dq, dk loses too much.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> la_bwd(
    const Tensor& dout_, const std::optional<Tensor>& dfinal_state, const Tensor& q_,
    const Tensor& k_, const Tensor& v_, const std::optional<Tensor>& slope, double scale,
    const std::optional<Tensor>& initial_state, const std::optional<Tensor>& cu_seqlens,
    bool need_dslope) {
  check_qkv(q_, k_, v_);
  const int64_t H = q_.size(1), N = q_.size(2), D = q_.size(3), E = v_.size(3);
  LA_CHECK(dout_.device() == q_.device() && dout_.scalar_type() == q_.scalar_type(),
           "dout must have q's device and dtype (got ", dout_.device(), ", ", dout_.scalar_type(), ")");
  LA_CHECK(dout_.dim() == 4 && dout_.size(0) == q_.size(0) && dout_.size(1) == H &&
               dout_.size(2) == N && dout_.size(3) == E,
           "dout must be (B, H, N, E) like the output (got ", dout_.sizes(), ")");
  const int64_t num_seqs = num_seqs_of(q_, cu_seqlens);
  check_slope(slope, H, q_);
  check_state(initial_state, "initial_state", num_seqs, H, D, E, q_);
  check_state(dfinal_state, "dfinal_state", num_seqs, H, D, E, q_);
  c10::cuda::CUDAGuard guard(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  Tensor dq = empty_like_layout(q_, D, q_.scalar_type());
  Tensor dk = empty_like_layout(k_, D, q_.scalar_type());
  Tensor dv = empty_like_layout(v_, E, q_.scalar_type());
  Tensor dinit = at::empty({initial_state.has_value() ? num_seqs : 0, H, D, E},
                           q_.options().dtype(at::kFloat));
  Tensor terms = need_dslope ? at::zeros({q_.size(0), H, N}, q_.options().dtype(at::kFloat))
                             : at::empty({0}, q_.options().dtype(at::kFloat));
  if (poison()) {
    for (Tensor* t : {&dq, &dk, &dv, &dinit}) t->fill_(NAN);
  }
  std::optional<Tensor> init, dfinal;
  if (initial_state.has_value()) init = initial_state->contiguous();
  if (dfinal_state.has_value()) dfinal = dfinal_state->contiguous();
  if (num_seqs == 0 || H == 0) return {dq, dk, dv, dinit, terms};
  if (N == 0) {
    if (initial_state.has_value()) {
      if (dfinal.has_value()) dinit.copy_(*dfinal);
      else dinit.zero_();
    }
    return {dq, dk, dv, dinit, terms};
  }
  const Tensor q = aligned(q_), k = aligned(k_), v = aligned(v_), dout = aligned(dout_);
  std::optional<Tensor> slope_c;
  if (slope.has_value()) slope_c = slope->contiguous();
  std::optional<Tensor> cu;
  if (cu_seqlens.has_value()) cu = cu_seqlens->contiguous();
  Plan pl = make_plan(q, cu, num_seqs, D, E, stream);
  const float* slope_p = ptr_or_null<float>(slope_c);

  // dq_t = scale · do_t S_tᵀ: the forward on (do, v, k) with the transposed initial state.
  fwd_core(dout, v, k, dq, slope_p, (float)scale, ptr_or_null<float>(init), /*sd=*/1, /*se=*/E,
           nullptr, pl, stream, &q, need_dslope ? terms.data_ptr<float>() : nullptr);

  BwdParams p{};
  p.seg = pl.seg;
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
  p.dstate_in = ptr_or_null<float>(dfinal);
  p.dstate_out = initial_state.has_value() ? dinit.data_ptr<float>() : nullptr;
  p.ws = pl.multi ? pl.ws.data_ptr<float>() : nullptr;
  p.terms = need_dslope ? terms.data_ptr<float>() : nullptr;
  LA_DISPATCH(q.scalar_type(), D, [&] {
    if (pl.multi) {
      run_bwd<T, kHD>(p, /*pass1=*/true, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      run_state_scan(pl.seg, p.ws, p.dstate_in, E, 1, slope_p, (int)D, (int)E, /*reverse=*/true, stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    run_bwd<T, kHD>(p, /*pass1=*/false, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv, dinit, terms};
}

Tensor la_decode(const Tensor& q_, const Tensor& k_, const Tensor& v_, Tensor& state,
                 const std::optional<Tensor>& slope, double scale) {
  LA_CHECK(q_.is_cuda() && k_.is_cuda() && v_.is_cuda() && state.is_cuda(),
           "q, k, v, state must be CUDA tensors");
  LA_CHECK(q_.dim() == 3 && k_.dim() == 3 && v_.dim() == 3,
           "decode: q, k must be (B, H, D) and v (B, H, E) (got ", q_.sizes(), ", ", k_.sizes(),
           ", ", v_.sizes(), ")");
  const int64_t B = q_.size(0), H = q_.size(1), D = q_.size(2), E = v_.size(2);
  LA_CHECK(k_.sizes() == q_.sizes() && v_.size(0) == B && v_.size(1) == H,
           "decode: k must match q (B, H, D) and v must be (B, H, E) (got ", k_.sizes(), ", ",
           v_.sizes(), ")");
  const auto dt = q_.scalar_type();
  LA_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
           "decode: q must be float16, bfloat16 or float32 (got ", dt, ")");
  LA_CHECK(k_.scalar_type() == dt && v_.scalar_type() == dt, "decode: k and v must have q's dtype");
  LA_CHECK(D <= 256 && E <= 256 && E % 4 == 0, "decode: D, E <= 256 and E % 4 == 0 (got D = ", D,
           ", E = ", E, ")");
  LA_CHECK(state.scalar_type() == at::kFloat && state.dim() == 4 && state.size(0) == B &&
               state.size(1) == H && state.size(2) == D && state.size(3) == E,
           "decode: state must be float32 (B, H, D, E) = (", B, ", ", H, ", ", D, ", ", E,
           ") (got ", state.scalar_type(), " ", state.sizes(), ")");
  LA_CHECK(state.is_contiguous() && reinterpret_cast<uintptr_t>(state.data_ptr()) % 16 == 0,
           "decode: state must be contiguous and 16-byte aligned (it is updated in place)");
  check_slope(slope, H, q_);
  c10::cuda::CUDAGuard guard(q_.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor o = at::empty({B, H, E}, q_.options());
  if (B * H == 0) return o;
  const Tensor q = q_.stride(-1) == 1 ? q_ : q_.contiguous();
  const Tensor k = k_.stride(-1) == 1 ? k_ : k_.contiguous();
  const Tensor v = v_.stride(-1) == 1 ? v_ : v_.contiguous();
  std::optional<Tensor> slope_c;
  if (slope.has_value()) slope_c = slope->contiguous();
  run_decode(q.data_ptr(), k.data_ptr(), v.data_ptr(), state.data_ptr<float>(), o.data_ptr(),
             ptr_or_null<float>(slope_c), (float)scale, (int)B, (int)H, (int)D, (int)E,
             q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
             dt == at::kFloat ? 0 : (dt == at::kHalf ? 1 : 2), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return o;
}

}  // namespace
}  // namespace la

TORCH_LIBRARY(lightning_attention_C, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? slope, float scale, Tensor? initial_state, "
      "Tensor? cu_seqlens, bool output_final_state) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor? dfinal_state, Tensor q, Tensor k, Tensor v, Tensor? slope, "
      "float scale, Tensor? initial_state, Tensor? cu_seqlens, bool need_dslope) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("decode(Tensor q, Tensor k, Tensor v, Tensor(a!) state, Tensor? slope, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lightning_attention_C, CUDA, m) {
  m.impl("fwd", &la::la_fwd);
  m.impl("bwd", &la::la_bwd);
  m.impl("decode", &la::la_decode);
}

#ifdef TORCH_EXTENSION_NAME
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lightning_attention CUDA kernels (ops under torch.ops.lightning_attention_C)";
  m.attr("cuda_version") = CUDA_VERSION;
  m.attr("cuda_archs") = LA_CUDA_ARCHS;
  m.attr("head_dims") = pybind11::make_tuple(64, 128);
  m.attr("fwd_block") = 64;
  m.attr("max_varlen_seg_len") = la::kMaxSegLen;
}
#endif
