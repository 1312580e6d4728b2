// ctest: lightning_attention_C::fwd on the GPU against the recurrence on the CPU in double
// (S_t = λ S_{t-1} + k_tᵀ v_t, o_t = scale · q_t S_t), decay, initial and final state.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/cuda.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <tuple>

int main() {
  if (!torch::cuda::is_available()) {
    std::printf("no GPU: skipped\n");
    return 0;
  }
  using at::Tensor;
  const int64_t B = 2, H = 3, N = 300, D = 64;
  const double scale = 0.5;
  at::manual_seed(0);
  auto opts = at::TensorOptions().device(at::kCUDA);
  Tensor q = (at::randn({B, H, N, D}, opts) / 8).to(at::kBFloat16);
  Tensor k = (at::randn({B, H, N, D}, opts) / 8).to(at::kBFloat16);
  Tensor v = at::randn({B, H, N, D}, opts).to(at::kBFloat16);
  Tensor slope = at::rand({H}, opts) * 0.3;
  Tensor s0 = at::randn({B, H, D, D}, opts) * 0.1;
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("lightning_attention_C::fwd", "")
                .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                  const std::optional<Tensor>&, double,
                                                  const std::optional<Tensor>&,
                                                  const std::optional<Tensor>&, bool,
                                                  std::optional<int64_t>)>();
  auto [o, fs] = op.call(q, k, v, slope, scale, s0, std::nullopt, true, std::nullopt);
  Tensor qc = q.cpu().to(at::kDouble), kc = k.cpu().to(at::kDouble), vc = v.cpu().to(at::kDouble);
  Tensor lam = at::exp(-slope.cpu().to(at::kDouble));
  Tensor oc = o.cpu().to(at::kDouble), fc = fs.cpu().to(at::kDouble);
  double err = 0, ref_max = 0, ferr = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      Tensor S = s0.cpu().to(at::kDouble)[b][h].clone();
      const double l = lam[h].item<double>();
      for (int64_t t = 0; t < N; ++t) {
        S = l * S + at::outer(kc[b][h][t], vc[b][h][t]);
        Tensor ot = scale * at::matmul(qc[b][h][t], S);
        err = std::max(err, (ot - oc[b][h][t]).abs().max().item<double>());
        ref_max = std::max(ref_max, ot.abs().max().item<double>());
      }
      ferr = std::max(ferr, (S - fc[b][h]).abs().max().item<double>() / (S.abs().max().item<double>() + 1e-9));
    }
  const bool ok = err <= 2e-2 * ref_max && ferr < 2e-2;
  std::printf("max |o - ref| = %.3e (max |ref| %.3e), final state rel err %.3e: %s\n", err, ref_max,
              ferr, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
