// Segment planning (la_plan.h).
#include "la_plan.h"

#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "la_specs.h"

namespace la {
namespace {

constexpr int kMaxSegLen = 2048;
constexpr int kMinSegLen = 128;
constexpr int kMaxDevices = 64;
constexpr int kMinPartBlocks = 4;  // a pass-1 part holds at least one group of full blocks
                                   // (la_state_sm90.cuh kGroup)

}  // namespace

const DeviceInfo& device_info(int dev) {
  static std::once_flag once[kMaxDevices];
  static DeviceInfo info[kMaxDevices];
  TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "lightning_attention_C: device index ", dev);
  std::call_once(once[dev], [dev] {
    DeviceInfo& d = info[dev];
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
  });
  return info[dev];
}

namespace {

// Pass 2 runs one CTA per SM, so its time is (waves) x (blocks per segment); more segments
// fill the machine but add pass 1 (K, V read once more) and the scan. Pass 1 of the mma.sync
// kernel: two CTAs per SM, about 0.77 of a pass-2 block each (measured on an H100). The sm_90a
// pass-1 kernel (la_state_sm90.cuh, `fast_pass1`) streams K and V at the copy rate, half of
// pass 2's bytes: about 0.4 of a pass-2 block per block, spread over the whole machine
// (H200, W at N = 64K: 16K segments 0.94 ms forward against 1.00 at 8K, 1.05 at 4K). Pick the
// segment length with the least modelled time, preferring longer segments (fewer states) on
// ties.
// W on an H100: N <= 16K -> one segment per sequence; N = 32K, 64K -> 4K, 8K-token segments.
// W on an H200 with the sm_90a pass-1 kernel: N = 32K, 64K -> 16K-token segments.
int pick_seg_len(int64_t rows, int64_t N, int sms, bool fast_pass1) {
  auto cost = [&](int64_t L) {
    const int64_t nseg = (N + L - 1) / L, blocks = (L + 63) / 64;
    double c = (double)((rows * nseg + sms - 1) / sms) * blocks;
    if (nseg > 1) {  // pass 1, the scan, and ~4 blocks' worth of state traffic per segment
      c += fast_pass1 ? 0.4 * rows * (nseg - 1) * blocks / sms
                      : (double)((rows * (nseg - 1) + 2 * sms - 1) / (2 * sms)) * blocks * 0.77;
      c += 10.0 + 4.0 * rows * nseg / sms;
    }
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

// Pass 1 of the sm_90a kernel on `segs` segments of `blocks` 64-token blocks, each cut into
// parts (one CTA each): the most parts (powers of two of at least kMinPartBlocks blocks) that
// still run in one wave of `slots` CTAs. More waves lost on the H200 (W, N = 64K: 96 segments
// in 4 parts, 384 CTAs in 3 waves: backward 3% slower than whole segments), one fuller wave
// won (N = 32K: 64 segments in 2 parts, 128 CTAs: forward 0.876 ms against 1.009).
int pick_parts(int64_t segs, int64_t blocks, int64_t slots) {
  int64_t parts = 1;
  while (segs * parts * 2 <= slots && (blocks + parts * 2 - 1) / (parts * 2) >= kMinPartBlocks)
    parts *= 2;
  return (int)parts;
}

// Whether the sm_90a kernels run on the device.
bool runs_sm90(const DeviceInfo& dev) {
  return dev.cc_major == 9 && dev.cc_minor == 0 && sm90_available();
}

// CTAs per SM of the sm_90a passes 1 and 2 (Sm90FwdTraits kMinBlocksPerSM).
int sm90_ctas_per_sm(int64_t D) { return D == 64 ? 2 : 1; }

// A short first segment (SegParams): segment 0's pass 2 (L0 blocks) runs beside pass 1 of
// segments 1 .. k-1 (L blocks each), then the scan and pass 2 of segments 1 .. k, in about
// (L0 + L)·t2 against L'·t1 + L'·t2 for k uniform segments of L' blocks. Balanced at
// L0·t2 = L·t1 with L0 + k·L the sequence's blocks, so L0 ≈ 0.35·L; t1, t2: the sm_90a pass 1
// and pass 2 per 64-token block and CTA, ~0.8 and ~2.3 µs on an H200 (W: D = E = 128, bf16;
// at N = 64K, k = 4: (L0, L) = (80, 236) blocks, ~0.73 ms against ~0.85). Only where the k
// uniform segments of `rows` sequences run in one wave of `slots` CTAs, so that segment 0's
// CTAs fit beside pass 1's, and L0 is not empty.
std::optional<SegLens> short_first_lens(int64_t rows, int64_t N, int64_t k, int64_t slots) {
  constexpr double kT1 = 0.8, kT2 = 2.3;
  if (k < 2 || rows * k > slots) return std::nullopt;
  const int64_t blocks = (N + 63) / 64;
  const int64_t L = std::llround((double)blocks / (k + kT1 / kT2));
  const int64_t L0 = blocks - k * L;
  if (L0 < 1 || L0 >= L) return std::nullopt;
  return SegLens{(int)(L0 * 64), (int)(L * 64)};
}

}  // namespace

SegLens plan_seg_lens(const at::Tensor& q, bool packed, int64_t D, std::optional<int64_t> seg_len,
                      std::optional<int64_t> first_len, bool forward_time) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
  const DeviceInfo& dev = device_info(q.get_device());
  const bool sm90 = runs_sm90(dev);
  int L;
  if (seg_len.has_value()) {
    TORCH_CHECK(*seg_len >= 64 && *seg_len % 64 == 0 && *seg_len <= (int64_t(1) << 30),
                "lightning_attention_C: seg_len must be a positive multiple of 64 (got ", *seg_len, ")");
    L = (int)*seg_len;
  } else if (packed) {  // packed sequences of unknown lengths: the longest segment
    // (<= kMaxSegLen) that gives four CTAs per SM if the tokens formed one sequence
    L = kMaxSegLen;
    while (L > kMinSegLen && H * ((N + L - 1) / L) < 4 * dev.sms) L /= 2;
  } else {
    L = pick_seg_len(B * H, N, dev.sms, sm90);
  }
  TORCH_CHECK(!first_len.has_value() || (*first_len >= 64 && *first_len % 64 == 0 && *first_len <= L),
              "lightning_attention_C: first_len must be a positive multiple of 64, at most the "
              "segment length ", L, " (got ", first_len.value_or(0), ")");
  const SegLens uniform{L, L};
  if (!forward_time || packed || !sm90) return uniform;
  if (first_len.has_value()) return SegLens{(int)*first_len, L};
  if (seg_len.has_value() || !sm90_short_first()) return uniform;
  return short_first_lens(B * H, N, (N + L - 1) / L, (int64_t)dev.sms * sm90_ctas_per_sm(D))
      .value_or(uniform);
}

Plan make_plan(const at::Tensor& q, const std::optional<at::Tensor>& cu, int64_t num_seqs,
               int64_t D, int64_t E, SegLens lens, cudaStream_t stream, bool moments) {
  Plan pl;
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
  const DeviceInfo& dev = device_info(q.get_device());
  pl.cc_major = dev.cc_major;
  pl.cc_minor = dev.cc_minor;
  pl.sm90 = runs_sm90(dev);
  // forward pass-2 pipeline depth: 3 stages where shared memory allows (Hopper), else 2
  pl.fwd_stages = smem_fwd_pass2((int)D, 3) <= dev.smem_optin ? 3 : 2;
  const int L = lens.seg_len;
  TORCH_CHECK(lens.first_len == L || (pl.sm90 && !cu.has_value() && !moments),
              "lightning_attention_C: a short first segment is for the sm_90a sweeps forward in "
              "time without cu_seqlens and moments");
  pl.seg.B = (int)B;
  pl.seg.H = (int)H;
  pl.seg.N = (int)N;
  pl.seg.num_seqs = (int)num_seqs;
  pl.seg.seg_len = L;
  pl.seg.first_len = lens.first_len;
  if (!cu.has_value()) {
    const int64_t L0 = lens.first_len;
    pl.seg.segs_per_seq = N <= L0 ? 1 : (int)(1 + (N - L0 + L - 1) / L);
    pl.seg.num_segs = (int)(B * pl.seg.segs_per_seq);
    pl.multi = pl.seg.segs_per_seq > 1;
    if (!pl.multi) pl.seg.first_len = L;  // one segment: nothing runs ahead
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
  // Pass 1 in parts: only the sm_90a one without moments (the scan carries the moments of
  // whole segments; the mma.sync pass 1 takes whole segments too).
  pl.seg.parts = 1;
  pl.seg.part_len = L;
  const bool ahead = short_first(pl.seg);
  if (pl.multi && pl.sm90 && !moments) {
    const int64_t blocks = (L + 63) / 64;
    // segments that have a pass 1 (all but each sequence's last, and a short first one;
    // packed: at most N / L)
    const int64_t segs = cu.has_value() ? H * ((N + L - 1) / L)
                                        : B * H * (pl.seg.segs_per_seq - (ahead ? 2 : 1));
    // CTAs of one wave, less those of a short first segment's pass 2 beside it
    const int64_t slots = (int64_t)dev.sms * sm90_ctas_per_sm(D) - (ahead ? B * H : 0);
    const int parts = segs > 0 ? pick_parts(segs, blocks, slots) : 1;
    const int64_t part_blocks = (blocks + parts - 1) / parts;
    pl.seg.part_len = (int)(part_blocks * 64);
    pl.seg.parts = (int)((blocks + part_blocks - 1) / part_blocks);
  }
  const auto f32 = q.options().dtype(at::kFloat);
  if (pl.multi) {
    pl.ws = at::empty({pl.seg.num_segs, H, D, E}, f32);
    pl.ws_local = pl.seg.parts > 1
                      ? at::empty({(int64_t)pl.seg.num_segs * pl.seg.parts, H, D, E}, f32)
                      : pl.ws;
  }
  if (pl.multi && moments) pl.ws_m = at::empty_like(pl.ws);
  return pl;
}

}  // namespace la
