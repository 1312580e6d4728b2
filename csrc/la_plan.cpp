// Segment planning (la_plan.h).
#include "la_plan.h"

#include <c10/cuda/CUDAException.h>

#include <algorithm>
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

// Pass 1 with moments (la_state_sm90.cuh kMoments) is bound by its products, not by the copy
// rate: a CTA's time is its blocks, so the parts (powers of two of at least kMinPartBlocks
// blocks) that give the fewest waves × (blocks per part + 2, a part's start and its two state
// stores), the fewest parts on ties. Without the decay horizon (slots as they are), W at
// N = 64K: 96 segments of 256 blocks, 4 parts in 3 waves of 132 (198) against whole segments
// (258); D = 64, H = 64: 64 segments of 512 blocks, 4 parts in one wave of 264 (130 against
// 514).
int pick_moment_parts(int64_t segs, int64_t blocks, int64_t slots) {
  auto cost = [&](int64_t parts) {
    return ((segs * parts + slots - 1) / slots) * ((blocks + parts - 1) / parts + 2);
  };
  int64_t best = 1;
  for (int64_t parts = 2; (blocks + parts - 1) / parts >= kMinPartBlocks; parts *= 2)
    if (cost(parts) < cost(best)) best = parts;
  return (int)best;
}

// The pass-1 layout of the plan's segments (the decay horizon, the parts) and its workspaces:
// ws (kept if the plan has it), ws_local, and with moments ws_m, ws_m_local.
void layout_pass1(Plan& pl, const at::Tensor& q, int64_t D, int64_t E, bool decay, bool moments) {
  const int64_t B = pl.seg.B, H = pl.seg.H, N = pl.seg.N, L = pl.seg.seg_len;
  // Pass 1 in parts: only the sm_90a one (the mma.sync pass 1 takes whole segments). With the
  // decay horizon (la_state_sm90.cuh) the parts of a strongly decaying head end at once, so
  // up to three waves of parts: the weakly decaying heads' parts then share the machine.
  pl.seg.parts = 1;
  pl.seg.part_len = (int)L;
  const bool horizon = pl.multi && pl.sm90 && decay && sm90_horizon();
  pl.seg.horizon_log2 = !horizon ? 0 : moments ? kMomentHorizonLog2 : kHorizonLog2;
  if (pl.multi && pl.sm90 && (!moments || sm90_dslope_plans())) {
    const int64_t blocks = (L + 63) / 64;
    // segments that have a pass 1 (all but each sequence's last; packed: at most N / L)
    const int64_t segs =
        pl.seg.seq_info ? H * ((N + L - 1) / L) : B * H * (pl.seg.segs_per_seq - 1);
    const int per_sm = D == 64 ? 2 : 1;  // pass-1 CTAs per SM (Sm90FwdTraits kMinBlocksPerSM)
    const int64_t slots = (int64_t)pl.sms * per_sm;
    // With moments and the horizon the weakest heads keep all their blocks and the others few
    // (ALiBi slopes: 35% of the blocks in all at W's 16K-token segments, 22% at D = 64, H = 64's
    // 32K), so the weak heads' parts, first in the grid, set the time: counting the slots four
    // times over gives them shorter parts: 8 at W's 32K, 16 at its 64K and at D = 64's 64K
    // (a list-scheduling model of the kept blocks: 68, 87 and 68 block-times, against 130, 198
    // and 260 without the horizon; on an H200 the learnable-slope fwd+bwd took 0.15-0.29 ms
    // less, bench/NOTES.md).
    const int parts = moments ? pick_moment_parts(segs, blocks, slots * (horizon ? 4 : 1))
                              : pick_parts(segs, blocks, slots * (horizon ? 3 : 1));
    const int64_t part_blocks = (blocks + parts - 1) / parts;
    pl.seg.part_len = (int)(part_blocks * 64);
    pl.seg.parts = (int)((blocks + part_blocks - 1) / part_blocks);
  }
  pl.ws_local = pl.ws_m = pl.ws_m_local = at::Tensor();
  if (!pl.multi) return;
  const auto f32 = q.options().dtype(at::kFloat);
  if (!pl.ws.defined()) pl.ws = at::empty({pl.seg.num_segs, H, D, E}, f32);
  pl.ws_local = pl.seg.parts > 1
                    ? at::empty({(int64_t)pl.seg.num_segs * pl.seg.parts, H, D, E}, f32)
                    : pl.ws;
  if (moments) {
    pl.ws_m = at::empty_like(pl.ws);
    pl.ws_m_local = pl.seg.parts > 1 ? at::empty_like(pl.ws_local) : pl.ws_m;
  }
}

}  // namespace

Plan make_plan(const at::Tensor& q, const std::optional<at::Tensor>& cu, int64_t num_seqs,
               int64_t D, int64_t E, std::optional<int64_t> seg_len, bool decay,
               cudaStream_t stream, bool moments) {
  Plan pl;
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
  const DeviceInfo& dev = device_info(q.get_device());
  pl.cc_major = dev.cc_major;
  pl.cc_minor = dev.cc_minor;
  pl.sms = dev.sms;
  pl.sm90 = dev.cc_major == 9 && dev.cc_minor == 0 && sm90_available();
  // forward pass-2 pipeline depth: 3 stages where shared memory allows (Hopper), else 2
  pl.fwd_stages = smem_fwd_pass2((int)D, 3) <= dev.smem_optin ? 3 : 2;
  int L;
  if (seg_len.has_value()) {
    TORCH_CHECK(*seg_len >= 64 && *seg_len % 64 == 0 && *seg_len <= (int64_t(1) << 30),
                "lightning_attention_C: seg_len must be a positive multiple of 64 (got ", *seg_len, ")");
    L = (int)*seg_len;
  } else if (cu.has_value()) {  // packed sequences of unknown lengths: the longest segment
    // (<= kMaxSegLen) that gives four CTAs per SM if the tokens formed one sequence
    L = kMaxSegLen;
    while (L > kMinSegLen && H * ((N + L - 1) / L) < 4 * dev.sms) L /= 2;
  } else {
    L = pick_seg_len(B * H, N, dev.sms, pl.sm90);
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
  layout_pass1(pl, q, D, E, decay, moments);
  return pl;
}

Plan without_moments(const Plan& pl, const at::Tensor& q, int64_t D, int64_t E, bool decay) {
  Plan pk = pl;
  layout_pass1(pk, q, D, E, decay, /*moments=*/false);
  return pk;
}

}  // namespace la
