// Forward kernel of Lightning Attention-2 (the block form), one CTA per
// (sequence, head, segment), 8 warps, 64-token blocks staged by cp.async (double buffered).
//
// Per block of n <= 64 tokens with incoming state S (D×E, fp32 in registers, a bf16/fp16
// copy in shared memory for the tensor cores):
//   O   = scale · ( diag(λ^{i+1}) Q S  +  ((Q Kᵀ) ⊙ M) V ),   M_ij = λ^{i-j} (i >= j)
//   S  <- λ^n S + (diag(λ^{n-1-j}) K)ᵀ V
// Pass 1 (kPass1) runs only the state recurrence from S = 0 and stores the segment's local
// state; a scan (la_scan.cu) turns local states into incoming states; pass 2 produces the
// outputs. Every exponent is a distance inside a block (<= 64), so nothing overflows.
//
// Warp layout (8 warps): outputs: warp w owns rows 16·(w%4).. of the block and the columns
// half (w/4) of E; state: warp w owns a 16 × (D·E/16/8) tile of S.
#pragma once

#include "la_common.cuh"
#include "la_params.h"

namespace la {

// kStages: cp.async pipeline depth of pass 2 (3: two blocks in flight while one computes).
// Pass 1 keeps 2 stages and is capped at 128 registers so that two CTAs share an SM.
template <typename T, int HD, bool kPass1, int kStages>
__global__ void __launch_bounds__(256, kPass1 ? 2 : 1) la_fwd_kernel(const FwdParams p) {
  using Tr = FwdTraits<T, HD>;
  using P2 = Pack2<T>;
  constexpr int kStride = Tr::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int g = blockIdx.x, h = blockIdx.y;
  const SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  if (kPass1 && si.seg == si.nseg - 1) return;  // nobody reads the last segment's local state

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int64_t widx = (int64_t)g * p.seg.H + h;
  const SegRows rows = seg_rows(p.seg, si, h);
  const T* qg = rows.at<const T>(p.q, p.q_bs, p.q_hs, p.q_rs);
  const T* kg = rows.at<const T>(p.k, p.k_bs, p.k_hs, p.k_rs);
  const T* vg = rows.at<const T>(p.v, p.v_bs, p.v_hs, p.v_rs);
  T* og = kPass1 ? nullptr : rows.at<T>(p.o, p.o_bs, p.o_hs, p.o_rs);

  // stage st: K at tile 2·st, V at 2·st + 1, Q at 2·kStages + st; the state copy after them
  auto sK = [&](int st) { return smem + (2 * st) * Tr::kTile; };
  auto sV = [&](int st) { return smem + (2 * st + 1) * Tr::kTile; };
  auto sQ = [&](int st) { return smem + (2 * kStages + st) * Tr::kTile; };
  T* sS = smem + 3 * kStages * Tr::kTile;
  float* sRed = reinterpret_cast<float*>(sS + Tr::kStateTile);  // (64,) row partials
  const bool terms = !kPass1 && p.terms != nullptr;
  const T* rqg = terms ? rows.at<const T>(p.rq, p.rq_bs, p.rq_hs, p.rq_rs) : nullptr;
  float* termsg = terms ? p.terms + (rows.batch * p.seg.H + h) * p.seg.N + rows.tok0 : nullptr;

  // The running state: warp tile rows [sm0, sm0 + 16) of D, columns [sn0, sn0 + kSTN) of E.
  const int sm0 = (warp % Tr::kSWM) * 16;
  const int sn0 = (warp / Tr::kSWM) * Tr::kSTN;
  // Incoming state: ws after the first segment, and for the first one too with slots (the
  // scan copied the pool row there: this sequence's last segment overwrites the row).
  float s_acc[Tr::kSNT][4];
  const bool from_ws = !kPass1 && (si.seg > 0 || (si.nseg > 1 && p.state_rows.slots != nullptr));
  const int64_t in_row = kPass1 || from_ws || p.state_in == nullptr
                             ? -1 : state_in_row(p.state_rows, si.seq);
  if (from_ws) {
    load_state(p.ws + widx * HD * HD, HD, 1, s_acc, sm0, sn0, lane);
  } else if (in_row >= 0) {
    load_state(p.state_in + (in_row * p.seg.H + h) * HD * HD, p.state_in_sd, p.state_in_se, s_acc,
               sm0, sn0, lane);
  } else {
#pragma unroll
    for (int nt = 0; nt < Tr::kSNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) s_acc[nt][i] = 0.f;
  }
  if (!kPass1) state_to_smem<T>(sS, kStride, s_acc, sm0, sn0, lane);

  const int nblk = (si.len + 63) / 64;
  auto issue = [&](int b) {
    const int t0 = b * 64, n = min(64, si.len - t0), st = b % kStages;
    load_tile<HD>(sK(st), kg, p.k_rs, t0, n, tid);
    load_tile<HD>(sV(st), vg, p.v_rs, t0, n, tid);
    if (!kPass1) load_tile<HD>(sQ(st), qg, p.q_rs, t0, n, tid);
  };
  // prologue: blocks 0 .. kStages-2 in flight (one commit group each, empty past the end)
#pragma unroll
  for (int b = 0; b < kStages - 1; ++b) {
    if (b < nblk) issue(b);
    cp_async_commit();
  }

  const int rg = warp & 3;                 // output rows [16 rg, 16 rg + 16) of the block
  const int oc0 = (warp >> 2) * (HD / 2);  // output columns [oc0, oc0 + HD/2)

  for (int b = 0; b < nblk; ++b) {
    // the stage of block b + kStages - 1 was last read in iteration b - 1, which ended
    // with a barrier
    if (b + kStages - 1 < nblk) issue(b + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    const int st = b % kStages;
    const int t0 = b * 64, n = min(64, si.len - t0);
    const uint32_t uK = smem_u32(sK(st)), uV = smem_u32(sV(st));

    if (!kPass1) {
      const uint32_t uQ = smem_u32(sQ(st)), uS = smem_u32(sS);
      float o_acc[Tr::kONT][4];
      float p_acc[8][4];
#pragma unroll
      for (int nt = 0; nt < Tr::kONT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) o_acc[nt][i] = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) p_acc[nt][i] = 0.f;

      // Q·S (inter-block) and Q·Kᵀ (intra-block), sharing the Q fragments.
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) {
        uint32_t a[4];
        ldsm_x4(a, addr_a(uQ, kStride, rg * 16, ks * 16, lane));
#pragma unroll
        for (int np = 0; np < Tr::kONT / 2; ++np) {
          uint32_t bb[4];
          ldsm_x4_t(bb, addr_bkn(uS, kStride, oc0 + np * 16, ks * 16, lane));
          mma16816<T>(o_acc[2 * np], a, bb[0], bb[1]);
          mma16816<T>(o_acc[2 * np + 1], a, bb[2], bb[3]);
        }
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          if (np <= rg) {  // keys past the warp's last row are masked: skip them
            uint32_t bb[4];
            ldsm_x4(bb, addr_bnk(uK, kStride, np * 16, ks * 16, lane));
            mma16816<T>(p_acc[2 * np], a, bb[0], bb[1]);
            mma16816<T>(p_acc[2 * np + 1], a, bb[2], bb[3]);
          }
        }
      }
      const int r0 = rg * 16 + gq, r1 = r0 + 8;
      const float f0 = decay_pow(nl2, (float)(r0 + 1)), f1 = decay_pow(nl2, (float)(r1 + 1));
#pragma unroll
      for (int nt = 0; nt < Tr::kONT; ++nt) {
        o_acc[nt][0] *= f0; o_acc[nt][1] *= f0;
        o_acc[nt][2] *= f1; o_acc[nt][3] *= f1;
      }
      // P = (Q Kᵀ) ⊙ M, then O += P V
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (kk <= rg) {
          uint32_t a[4];
          mask_decay_pack<T, false>(a, p_acc, kk, true, r0, r1, tq, nl2, 1.f);
#pragma unroll
          for (int np = 0; np < Tr::kONT / 2; ++np) {
            uint32_t bb[4];
            ldsm_x4_t(bb, addr_bkn(uV, kStride, oc0 + np * 16, kk * 16, lane));
            mma16816<T>(o_acc[2 * np], a, bb[0], bb[1]);
            mma16816<T>(o_acc[2 * np + 1], a, bb[2], bb[3]);
          }
        }
      }
      const float c = p.scale;
      float part0 = 0.f, part1 = 0.f;  // rq · o over this warp's columns (d slope terms)
#pragma unroll
      for (int nt = 0; nt < Tr::kONT; ++nt) {
        const int col = oc0 + nt * 8 + 2 * tq;
        if (r0 < n) {
          *reinterpret_cast<uint32_t*>(og + (int64_t)(t0 + r0) * p.o_rs + col) =
              P2::pack(c * o_acc[nt][0], c * o_acc[nt][1]);
          if (terms) {
            const float2 x = P2::unpack(
                *reinterpret_cast<const uint32_t*>(rqg + (int64_t)(t0 + r0) * p.rq_rs + col));
            part0 += x.x * (c * o_acc[nt][0]) + x.y * (c * o_acc[nt][1]);
          }
        }
        if (r1 < n) {
          *reinterpret_cast<uint32_t*>(og + (int64_t)(t0 + r1) * p.o_rs + col) =
              P2::pack(c * o_acc[nt][2], c * o_acc[nt][3]);
          if (terms) {
            const float2 x = P2::unpack(
                *reinterpret_cast<const uint32_t*>(rqg + (int64_t)(t0 + r1) * p.rq_rs + col));
            part1 += x.x * (c * o_acc[nt][2]) + x.y * (c * o_acc[nt][3]);
          }
        }
      }
      if (terms) {
        row_partials_stage(part0, part1, sRed, warp, r0, r1, tq, lane);
      }
    }

    // S <- λ^n S + (diag(λ^{n-1-j}) K)ᵀ V
    state_update<T, Tr::kSNT>(s_acc, uK, uV, kStride, sm0, sn0, n, nl2, (float)(n - 1), -1.f,
                              1.f, lane);
    __syncthreads();  // every warp is done with this stage and with sS
    if (terms) row_partials_finish(termsg, sRed, t0, n, warp, rg, gq, tq, 1.f);
    if (!kPass1 && b + 1 < nblk) state_to_smem<T>(sS, kStride, s_acc, sm0, sn0, lane);
  }
  cp_async_wait<0>();

  if (kPass1) {
    store_state(p.ws + widx * HD * HD, HD, 1, s_acc, sm0, sn0, lane);
  } else if (si.seg == si.nseg - 1 && p.state_out != nullptr) {
    const int64_t row = state_out_row(p.state_rows, si.seq);
    if (row >= 0)
      store_state(p.state_out + (row * p.seg.H + h) * HD * HD, HD, 1, s_acc, sm0, sn0, lane);
  }
}

template <typename T, int HD, bool kPass1, int kStages>
void launch_fwd(const FwdParams& p, int smem, cudaStream_t stream) {
  auto kernel = la_fwd_kernel<T, HD, kPass1, kStages>;
  if (smem > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kernel<<<dim3(p.seg.num_segs, p.seg.H), FwdTraits<T, HD>::kThreads, smem, stream>>>(p);
}

// stages: pass-2 pipeline depth, 2 or 3 (la_plan.cpp picks; 3 needs ~192 KB for D = 128)
template <typename T, int HD>
void run_fwd(const FwdParams& p, bool pass1, int stages, cudaStream_t stream) {
  using Tr = FwdTraits<T, HD>;
  if (pass1)
    launch_fwd<T, HD, true, 2>(p, Tr::kSmemPass1, stream);
  else if (stages >= 3)
    launch_fwd<T, HD, false, 3>(p, Tr::smem_pass2(3), stream);
  else
    launch_fwd<T, HD, false, 2>(p, Tr::smem_pass2(2), stream);
}

}  // namespace la
