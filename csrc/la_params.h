// Kernel parameters: raw pointers and element strides (no copies of BHND/BNHD inputs),
// plus the segmentation of each sequence that spreads one (batch, head) over many CTAs.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace la {

// One (batch or packed sequence, head, segment) is one CTA. A segment is `seg_len` tokens
// (a multiple of the 64-token block) of one sequence; the last segment of a sequence may be
// shorter, and an empty sequence has one empty segment (it still passes its state through).
struct SegParams {
  int B, H, N;          // q is (B, H, N, D); with cu_seqlens B == 1
  int num_seqs;         // B, or len(cu_seqlens) - 1
  int seg_len;          // tokens per segment
  int segs_per_seq;     // without cu_seqlens: ceil(N / seg_len) (>= 1)
  int num_segs;         // grid.x: B * segs_per_seq, or an upper bound with cu_seqlens
  int parts;            // pass 1 (sm_90a) cuts each segment into parts of part_len tokens
  int part_len;         // (a multiple of 64; the last parts of a short segment may be empty),
                        // one CTA each; 1 part: the segment itself
  const int* seq_info;  // with cu_seqlens: per sequence {bos, eos, first segment, segments}
  const int* seg_seq;   // with cu_seqlens: per segment its sequence, or -1 (unused CTA)
  int horizon_log2;     // the sm_90a pass 1 skips the tokens whose weight in a segment's
                        // state (and moment) is below 2^-horizon_log2, past each head's decay
                        // horizon (la_state_sm90.cuh): kHorizonLog2, kMomentHorizonLog2 with
                        // moments; 0: every token (LIGHTNING_ATTENTION_HORIZON=0)
};

// The decay horizons' weights: a state's (λ^d at distance d, la_state_sm90.cuh says why 2^-190
// is enough), and with moments 2^32 lower, since a moment weights the same token by up to
// 2^31 times more ((d + 1) λ^d, d + 1 ≤ 2^31).
constexpr int kHorizonLog2 = 190, kMomentHorizonLog2 = 222;

// Where each sequence's state lives in state_in / state_out: rows of H·D·E floats. Serving
// addresses rows of a pool by slot; otherwise sequence i is row i.
struct StateRows {
  const int* slots;       // per sequence its row, nullptr: row = sequence; a slot outside
                          // [0, num_slots) reads and writes no state
  const bool* has_state;  // per sequence whether its row is read (else it starts from 0);
                          // nullptr: every addressed row is read
  int num_slots;
};

// Forward kernel (also the dq sweep of the backward, with q -> do, k -> v, v -> k and the
// initial state transposed through its strides).
struct FwdParams {
  SegParams seg;
  const void* q; const void* k; const void* v;
  void* o;
  int64_t q_bs, q_hs, q_rs;  // batch, head, row (token) strides in elements
  int64_t k_bs, k_hs, k_rs;
  int64_t v_bs, v_hs, v_rs;
  int64_t o_bs, o_hs, o_rs;
  const float* slope;        // (H,) or nullptr: no decay
  float scale;
  const float* state_in;     // (num_seqs, H, D, E) or nullptr
  int64_t state_in_sd, state_in_se;  // strides of d and e inside one D×E matrix
  float* state_out;          // final state (num_seqs, H, D, E) or nullptr
  StateRows state_rows;      // rows of state_in and state_out; they may be one pool, updated
                             // in place
  float* ws;                 // per (segment, head) D×E states: local, then incoming
  bool ws_transposed;        // pass 2 reads ws[segment] as E×D (the dq sweep on the forward's
                             // incoming states, sm_90a)
  float* ws_local;           // per (segment part, head) local states of pass 1 (sm_90a); ws
                             // itself with one part per segment
  // d slope terms (dq sweep only, on (do, v, k)): terms[b, h, t] = τ_t, the per-token terms
  // of d log λ in the direct form (docs/DSLOPE.md), from the real q (rq) and k (the kernel's
  // v), the final state's gradient dstate_f (read through the strides of state_in), and the
  // moment state beside S: ws_m per (segment, head) like ws, ws_m_local per (segment part,
  // head) like ws_local (ws_m itself with one part). terms nullptr: off; terms is contiguous
  // (B, H, N) float32.
  const void* rq;
  int64_t rq_bs, rq_hs, rq_rs;
  const float* dstate_f;
  float* ws_m;
  float* ws_m_local;
  float* terms;
};

// Backward dk/dv kernel: the reverse sweep with the running state gradient.
struct BwdParams {
  SegParams seg;
  const void* q; const void* k; const void* v; const void* dout;
  void* dk; void* dv;
  int64_t q_bs, q_hs, q_rs;
  int64_t k_bs, k_hs, k_rs;
  int64_t v_bs, v_hs, v_rs;
  int64_t do_bs, do_hs, do_rs;
  int64_t dk_bs, dk_hs, dk_rs;
  int64_t dv_bs, dv_hs, dv_rs;
  const float* slope;
  float scale;
  const float* dstate_in;    // d final_state (num_seqs, H, D, E) contiguous, or nullptr
  float* dstate_out;         // d initial_state, or nullptr
  float* ws;
};

struct SegInfo {
  int seq;      // sequence (batch index without cu_seqlens)
  int64_t bos;  // first token of the sequence in the N axis
  int len;      // tokens in this segment
  int start;    // first token of the segment, relative to bos
  int seg;      // segment index within the sequence
  int nseg;     // segments of the sequence
  bool valid;
};

#ifdef __CUDACC__
__device__ __forceinline__ SegInfo get_seg(const SegParams& p, int g) {
  SegInfo s;
  if (p.seq_info == nullptr) {
    s.seq = g / p.segs_per_seq;
    s.seg = g - s.seq * p.segs_per_seq;
    s.nseg = p.segs_per_seq;
    s.bos = 0;
    s.start = s.seg * p.seg_len;
    s.len = min(p.seg_len, p.N - s.start);
    s.valid = true;
  } else {
    const int seq = p.seg_seq[g];
    s.valid = seq >= 0;
    s.seq = max(seq, 0);
    const int4 info = reinterpret_cast<const int4*>(p.seq_info)[s.seq];
    s.bos = info.x;
    s.seg = g - info.z;
    s.nseg = info.w;
    s.start = s.seg * p.seg_len;
    s.len = max(0, min(p.seg_len, info.y - info.x - s.start));
  }
  return s;
}

// The row of sequence `seq`'s state: the one it ends in, and the one it starts from (-1: no
// state, start from 0).
__device__ __forceinline__ int64_t state_out_row(const StateRows& r, int seq) {
  if (r.slots == nullptr) return seq;
  const int row = r.slots[seq];
  return row >= 0 && row < r.num_slots ? row : -1;
}
__device__ __forceinline__ int64_t state_in_row(const StateRows& r, int seq) {
  const int64_t row = state_out_row(r, seq);
  return r.has_state == nullptr || r.has_state[seq] ? row : -1;
}

// Where a CTA's segment starts in a (B, H, N, ·) tensor: its batch entry (0 with cu_seqlens),
// head and first token; `at` applies a tensor's element strides.
struct SegRows {
  int64_t batch, tok0;
  int h;
  template <typename T, typename V>
  __device__ __forceinline__ T* at(V* base, int64_t bs, int64_t hs, int64_t rs) const {
    return static_cast<T*>(base) + batch * bs + h * hs + tok0 * rs;
  }
};
__device__ __forceinline__ SegRows seg_rows(const SegParams& p, const SegInfo& si, int h) {
  return {p.seq_info ? 0 : si.seq, si.bos + si.start, h};
}

// Tokens from the state's reference within which a head's weights stay at or above
// 2^-log2 (la_state_sm90.cuh says why the rest may be skipped); every token without decay.
constexpr int64_t kNoHorizon = INT64_MAX / 4;
__device__ __forceinline__ int64_t decay_horizon(const float* slope, int h, int log2) {
  const float sl = slope != nullptr ? slope[h] : 0.f;
  if (!(sl > 0.f)) return kNoHorizon;  // no decay, or not a number: every token counts
  const float d = (float)log2 / (sl * 1.4426950408889634f);
  return d < 1e15f ? (int64_t)ceilf(d) : kNoHorizon;
}
// The horizon pass 1 stops at for head h, and the scan with it: decay_horizon where the plan
// turned it on (p.horizon_log2: the sm_90a pass 1 with decay), else none.
__device__ __forceinline__ int64_t pass1_horizon(const SegParams& p, const float* slope, int h) {
  return p.horizon_log2 ? decay_horizon(slope, h, p.horizon_log2) : kNoHorizon;
}

// The tokens pass 1 reads of part `part` of segment si: the part's range (none past the
// segment's end), without the whole blocks past the horizon hz from the segment's reference
// (forward: its last token; reverse: the token before its first). len 0: the part's local
// state is 0.
__device__ __forceinline__ SegInfo pass1_part(const SegParams& p, SegInfo si, int part, int64_t hz,
                                              bool reverse) {
  const int seg_start = si.start, seg_end = si.start + si.len;
  si.start += part * p.part_len;
  si.len = max(0, min(p.part_len, si.len - part * p.part_len));
  if (reverse) {  // blocks that start before seg_start + hz - 1
    const int64_t keep = (seg_start + hz - 1 - si.start + 63) / 64;
    si.len = (int)min((int64_t)si.len, max((int64_t)0, keep) * 64);
  } else {  // blocks that end after seg_end - hz
    const int64_t drop =
        min((int64_t)(si.len + 63) / 64, max((int64_t)0, (seg_end - hz - si.start) / 64));
    si.start += (int)drop * 64;
    si.len = max(0, si.len - (int)drop * 64);
  }
  return si;
}

// Whether pass 1 stores the local state of part `part` with `len` tokens left (pass1_part):
// only parts with tokens, and in reverse part 0 always, so that every segment has one stored
// part (the state's reference end; a segment wholly past the horizon stores one zero state).
// The scan reads exactly these.
__device__ __forceinline__ bool pass1_stores(int len, int part, bool reverse) {
  return len > 0 || (reverse && part == 0);
}

// The parts of a segment of `seg_len` tokens whose local states pass 1 stores: [x, y). They
// are contiguous: the horizon drops a segment's earliest parts (forward) or its latest
// (reverse), and only a short segment has parts without tokens, at its end. Never empty.
__device__ __forceinline__ int2 pass1_stored_parts(const SegParams& p, int seg_len, int64_t hz,
                                                   bool reverse) {
  SegInfo si{};
  si.len = seg_len;
  int2 r = make_int2(p.parts, 0);
  for (int j = 0; j < p.parts; ++j)
    if (pass1_stores(pass1_part(p, si, j, hz, reverse).len, j, reverse)) {
      r.x = min(r.x, j);
      r.y = j + 1;
    }
  return r;
}
#endif  // __CUDACC__

// Host-side launchers (instantiated per dtype and head dim in la_*_<dtype>_hd<D>.cu).
// pass1: per-segment local states into ws (no outputs); else outputs and final state.
// The incoming state of a segment is ws[segment] except for the first segment of a
// sequence (forward: state_in or 0) and the last one (backward: dstate_in or 0).
template <typename T, int HD>
void run_fwd(const FwdParams& p, bool pass1, int stages, cudaStream_t stream);
template <typename T, int HD>
void run_bwd(const BwdParams& p, bool pass1, cudaStream_t stream);

// The sm_90a kernel (la_fwd_sm90.cuh), both passes: the forward, or with `reverse` the dk/dv
// sweep in reversed time; with p.terms the dq sweep with the d slope terms (pass 1 with the
// moments, pass 2 with the terms); and whether this build and driver can run it
// (la_sm90_host.cu).
template <typename T, int HD>
void run_fwd_sm90(const FwdParams& p, bool pass1, bool reverse, cudaStream_t stream);
bool sm90_available();
// The fused sm_90a dk/dv sweep (la_bwd_sm90.cuh), pass 2 only (its pass 1 is the reversed
// run_fwd_sm90 of the dV product); and whether it replaces the two reversed passes (unless
// LIGHTNING_ATTENTION_SM90_FUSED_BWD=0, la_sm90_host.cu). `one_per_sm`: the grid's CTAs fit
// the SMs once (the ring it takes at D = 64).
template <typename T, int HD>
void run_bwd_sm90(const BwdParams& p, bool one_per_sm, cudaStream_t stream);
bool sm90_fused_bwd();
// Whether the sm_90a pass 1 stops at the decay horizon (la_state_sm90.cuh): unless
// LIGHTNING_ATTENTION_HORIZON=0 (la_sm90_host.cu).
bool sm90_horizon();
// Whether the learnable-slope backward on sm_90a runs its pass 1 with moments in parts of
// segments (la_plan.cpp) and its dk/dv sweep on a plan of its own, without moments
// (la_ops.cpp): unless LIGHTNING_ATTENTION_DSLOPE_PLANS=0 (la_sm90_host.cu).
bool sm90_dslope_plans();
// Whether the sm_90a dq sweep with d slope terms reads S as its 16-bit copy and that copy's
// residual (la_fwd_sm90.cuh kResidual): unless LIGHTNING_ATTENTION_DSLOPE_RESIDUAL=0
// (la_sm90_host.cu).
bool sm90_dslope_residual();

// la_scan.cu
void run_varlen_plan(const int* cu_seqlens, int num_seqs, int N, int seg_len, int num_segs,
                     int* seq_info, int* seg_seq, cudaStream_t stream);
// Turns the local states of the segments' parts (ws_local[segment · parts + part], ws itself
// with one part) into the segments' incoming states ws[segment], in sequence order (forward:
// the first segment's incoming state is state_in or 0) or reverse order (backward: the last
// segment's is state_in), state_in's rows as `rows` says. Each D×E matrix is `DE` floats.
// With ws_m (forward only), the moments ws_m[segment] likewise from the parts' local moments
// ws_m_local (laid out as ws_local), carried beside the states (the first one is state_in
// too). With slots (a pool, which pass 2 updates in place) the scan also writes that first
// incoming state (and moment) into ws (ws_m): pass 2 then reads every incoming state of a
// sequence of several segments from ws, never the pool row that the sequence's last segment
// overwrites meanwhile.
void run_state_scan(const SegParams& p, const float* ws_local, float* ws, float* ws_m,
                    const float* ws_m_local, const float* state_in, int64_t state_in_sd,
                    int64_t state_in_se, const StateRows& rows, const float* slope, int D,
                    int E, bool reverse, cudaStream_t stream);

// One decode step (la_decode.cu): for each row b of q, k (B, H, D) and v (B, H, E), the state
// S = state[rows(b), h] (D×E, contiguous) becomes λ S + kᵀ v in place and o[b, h] =
// scale · q S; a row whose slot addresses no state gets o[b] = 0. o is contiguous (B, H, E).
struct DecodeParams {
  const void* q; const void* k; const void* v;
  void* o;
  int64_t q_bs, q_hs, k_bs, k_hs, v_bs, v_hs;
  float* state;
  StateRows rows;  // has_state unused: every addressed state is read
  const float* slope;
  float scale;
  int B, H, D, E;
  int sms, cc_major;  // the device's (la_plan.h device_info): whether CTAs split E, bulk copies
};
void run_decode(const DecodeParams& p, int dtype /*0 fp32, 1 fp16, 2 bf16*/, cudaStream_t stream);

}  // namespace la
