// Small kernels around the block kernels: the varlen plan (which CTA serves which segment of
// which packed sequence) and the scan that turns per-segment local states into incoming
// states.
#include <cub/block/block_scan.cuh>

#include "la_params.h"

namespace la {

struct MaxOp {
  __device__ __forceinline__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// One CTA of 1024 threads. Sequence i spans [m_i, m_{i+1}) with m_i the running maximum of
// clamp(cu_seqlens[j], 0, N) over j <= i: malformed offsets are clamped, never followed,
// and the segments never exceed ceil(N / seg_len) + num_seqs (= num_segs).
__global__ void __launch_bounds__(1024) la_varlen_plan_kernel(const int* __restrict__ cu, int num_seqs,
                                                              int N, int seg_len, int num_segs,
                                                              int4* __restrict__ seq_info,
                                                              int* __restrict__ seg_seq) {
  using Scan = cub::BlockScan<int, 1024>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_end[1024];
  __shared__ int carry_max, carry_segs;
  const int tid = threadIdx.x;
  if (tid == 0) {
    carry_max = min(max(cu[0], 0), N);
    carry_segs = 0;
  }
  __syncthreads();
  for (int base = 0; base < num_seqs; base += 1024) {
    const int i = base + tid;
    const int end = i < num_seqs ? min(max(cu[i + 1], 0), N) : 0;
    int m;
    Scan(tmp).InclusiveScan(end, m, MaxOp());
    m = max(m, carry_max);
    s_end[tid] = m;
    __syncthreads();
    const int start = tid == 0 ? carry_max : s_end[tid - 1];
    const int len = m - start;
    const int nseg = i < num_seqs ? max(1, (len + seg_len - 1) / seg_len) : 0;
    int off, total;
    Scan(tmp).ExclusiveSum(nseg, off, total);
    off += carry_segs;
    if (i < num_seqs) {
      seq_info[i] = make_int4(start, m, off, nseg);
      for (int s = 0; s < nseg && off + s < num_segs; ++s) seg_seq[off + s] = i;
    }
    __syncthreads();
    if (tid == 0) {
      carry_max = s_end[1023];
      carry_segs += total;
    }
    __syncthreads();
  }
  for (int g = carry_segs + tid; g < num_segs; g += 1024) seg_seq[g] = -1;
}

void run_varlen_plan(const int* cu_seqlens, int num_seqs, int N, int seg_len, int num_segs,
                     int* seq_info, int* seg_seq, cudaStream_t stream) {
  la_varlen_plan_kernel<<<1, 1024, 0, stream>>>(cu_seqlens, num_seqs, N, seg_len, num_segs,
                                                reinterpret_cast<int4*>(seq_info), seg_seq);
}

// grid (num_seqs, H, ceil(D·E / 1024)); one thread per four consecutive elements of a state
// row (E is a multiple of 4: LA_FOR_EACH_HEAD_DIM), moved with 16-byte loads and stores, walks
// the parts of its sequence's segments in order (forward) or in reverse (backward). Part j of
// segment s holds the tokens [s·seg_len + j·part_len, + part_len) of the sequence, clipped to
// the segment (maybe empty); its local state is ws_local[s·parts + j], ws[s] itself with one
// part. Pass 1 stores only some parts' local states (pass1_stored_parts: none for the parts
// without tokens or wholly past the decay horizon); the others are 0 and only decay the
// carry, so the walk reads the stored ones and folds the others' tokens into the decay of the
// next stored part. With carry_0 = state_in:
//   forward:  carry = λ^{len} carry + local over the parts of segments 0 .. nseg-2 in order;
//             after the last part of segment s, ws[s + 1] = carry (segment s + 1's incoming)
//   backward: the parts of segments nseg-1 .. 1 in reverse; after the first part of segment s,
//             ws[s - 1] = carry
// kMoment (forward): the moments beside the states, part by part with the states' old value,
//   carry_m = λ^{len} (carry_m + len · carry) + local moment (ws_m_local, laid out as ws_local)
// over the part's len tokens; ws_m[s + 1] = carry_m after segment s; carry_m_0 = state_in
// (la_fwd_kernel.cuh, d slope).
// With slots, carry_0 (backward: for the last segment) also goes to ws, and the moment's to
// ws_m (run_state_scan says why). With one part ws_local is ws: every store targets a
// segment whose local state was loaded already. A fixed order of additions: deterministic.
// Each thread's chain is a few dependent memory round trips with kC loads in flight; four
// elements a thread (60 registers, four CTAs per SM) keep the grid to one wave at W's 64K,
// where one element a thread took three waves of long chains (bench/NOTES.md).
template <bool kMoment>
__global__ void la_state_scan_kernel(const SegParams p, const float* ws_local, float* ws,
                                     float* ws_m, const float* ws_m_local,
                                     const float* __restrict__ state_in, int64_t sd,
                                     int64_t se, const StateRows rows,
                                     const float* __restrict__ slope, int D, int E, bool reverse) {
  const int seq = blockIdx.x, h = blockIdx.y;
  const int idx = (blockIdx.z * 256 + threadIdx.x) * 4;
  if (idx >= D * E) return;
  const int d = idx / E, e = idx % E;
  int first, nseg, seqlen;
  if (p.seq_info == nullptr) {
    first = seq * p.segs_per_seq;
    nseg = p.segs_per_seq;
    seqlen = p.N;
  } else {
    const int4 info = reinterpret_cast<const int4*>(p.seq_info)[seq];
    first = info.z;
    nseg = info.w;
    seqlen = info.y - info.x;
  }
  if (nseg <= 1) return;
  const float nl2 = slope ? -slope[h] * 1.4426950408889634f : 0.f;
  const int64_t DE = (int64_t)D * E;
  const int64_t H = p.H;
  const int parts = p.parts;
  auto off = [&](int s) { return ((int64_t)(first + s) * H + h) * DE + idx; };
  auto loc_off = [&](int f) { return ((int64_t)first * parts + f) * H * DE + h * DE + idx; };
  auto load = [](const float* src) { return *reinterpret_cast<const float4*>(src); };
  auto store = [](float* dst, float4 x) { *reinterpret_cast<float4*>(dst) = x; };
  const int64_t row = state_in ? state_in_row(rows, seq) : -1;
  auto in = [&](int i) {
    return row >= 0 ? state_in[(row * H + h) * DE + d * sd + (e + i) * se] : 0.f;
  };
  float4 carry = make_float4(in(0), in(1), in(2), in(3));
  float4 carry_m = carry;

  // The stored parts in processing order. Every segment but a sequence's last is full, so one
  // range serves them all; only the backward walks the last one (first).
  const int64_t hz = pass1_horizon(p, slope, h);
  const int last_len = seqlen - (nseg - 1) * p.seg_len;
  const int2 full = pass1_stored_parts(p, p.seg_len, hz, reverse);
  const int2 lead = reverse ? pass1_stored_parts(p, last_len, hz, true) : full;
  const int kf = full.y - full.x, k0 = lead.y - lead.x;  // >= 1 each (pass1_stored_parts)
  const int cnt = k0 + (nseg - 2) * kf;
  // A cursor over them: segment t in processing order (0 first), its i-th stored part.
  struct Cursor {
    int t, i;
  };
  auto range = [&](int t) { return t == 0 ? lead : full; };
  auto seg_of = [&](int t) { return reverse ? nseg - 1 - t : t; };
  auto part_of = [&](const Cursor& c) {
    const int2 r = range(c.t);
    return reverse ? r.y - 1 - c.i : r.x + c.i;
  };
  auto advance = [&](Cursor& c) {
    const int2 r = range(c.t);
    if (++c.i == r.y - r.x) c = Cursor{c.t + 1, 0};
  };
  Cursor ld{0, 0}, at{0, 0};  // the next part to load, and to add
  auto load_next = [&](float4& x, float4& x_m) {
    const int f = seg_of(ld.t) * parts + part_of(ld);
    x = load(ws_local + loc_off(f));
    if (kMoment) x_m = load(ws_m_local + loc_off(f));
    advance(ld);
  };
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  // Loads run a chunk ahead of the dependent chain of carries.
  constexpr int kC = 3;
  float4 nxt[kC], nxt_m[kC];
#pragma unroll
  for (int j = 0; j < kC; ++j) {
    nxt[j] = nxt_m[j] = zero;
    if (j < cnt) load_next(nxt[j], nxt_m[j]);
  }
  if (rows.slots != nullptr) {  // (loaded above) pass 2 reads them here
    store(ws + off(reverse ? nseg - 1 : 0), carry);
    if (kMoment) store(ws_m + off(0), carry_m);
  }
  // c ← dl·c + x, and the moment's m ← dl·(m + len·c) + y with c's old value
  auto step = [](float4& c, float dl, float4 x) {
    c = make_float4(dl * c.x + x.x, dl * c.y + x.y, dl * c.z + x.z, dl * c.w + x.w);
  };
  auto step_m = [](float4& m, float dl, float len, float4 c, float4 y) {
    m = make_float4(dl * (m.x + len * c.x) + y.x, dl * (m.y + len * c.y) + y.y,
                    dl * (m.z + len * c.z) + y.z, dl * (m.w + len * c.w) + y.w);
  };
  for (int base = 0; base < cnt; base += kC) {
    float4 loc[kC], loc_m[kC];
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      loc[j] = nxt[j];
      if (kMoment) loc_m[j] = nxt_m[j];
    }
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      nxt[j] = nxt_m[j] = zero;
      if (base + kC + j < cnt) load_next(nxt[j], nxt_m[j]);
    }
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      if (base + j < cnt) {
        // the tokens the carry decays over: the part's, and on a segment's first stored part
        // also those of the parts before it (in processing order) that have none stored
        const int sg = seg_of(at.t), pj = part_of(at);
        const int slen = sg == nseg - 1 ? last_len : p.seg_len;
        const int pstart = pj * p.part_len, pend = min(pstart + p.part_len, slen);
        const int n = at.i > 0 ? pend - pstart : reverse ? slen - pstart : pend;
        const float len = (float)n;
        const float dl = exp2f(nl2 * len);
        if (kMoment) step_m(carry_m, dl, len, carry, loc_m[j]);
        step(carry, dl, loc[j]);
        advance(at);
        if (at.i == 0) {  // the segment's last stored part: the next one's incoming state
          const int to = reverse ? sg - 1 : sg + 1;
          if (kMoment) store(ws_m + off(to), carry_m);
          store(ws + off(to), carry);
        }
      }
    }
  }
}

void run_state_scan(const SegParams& p, const float* ws_local, float* ws, float* ws_m,
                    const float* ws_m_local, const float* state_in, int64_t sd, int64_t se,
                    const StateRows& rows, const float* slope, int D, int E, bool reverse,
                    cudaStream_t stream) {
  const dim3 grid(p.num_seqs, p.H, (D * E / 4 + 255) / 256);
  auto kernel = ws_m != nullptr ? la_state_scan_kernel<true> : la_state_scan_kernel<false>;
  kernel<<<grid, 256, 0, stream>>>(p, ws_local, ws, ws_m, ws_m_local, state_in, sd, se, rows,
                                   slope, D, E, reverse);
}

}  // namespace la
