// Backward dk/dv kernel of Lightning Attention-2: the reverse sweep with the running state
// gradient (the paper's Algorithm 2), one CTA per (sequence, head, segment), blocks walked
// from the last to the first. (dq is the forward kernel on (do, v, k), see la_launch.cpp.)
//
// With G_t = dL/dS_t and H = λ·G_{t0+n} (or d final_state for the sequence's last token),
// for a block of n tokens [t0, t0 + n), rows j, and Mᵀ_jτ = λ^{τ-j} (τ >= j):
//   dV = diag(λ^{n-1-j}) K H   + (scale · (K Qᵀ)  ⊙ Mᵀ) dO
//   dK = diag(λ^{n-1-j}) V Hᵀ  + (scale · (V dOᵀ) ⊙ Mᵀ) Q
//   H <- λ^n H + scale · (diag(λ^{j+1}) Q)ᵀ dO          (= λ·G_{t0}; d initial_state at the end)
// Pass 1 runs only the H recurrence from 0 over a segment (its local contribution), a
// reverse scan gives each segment its incoming H, pass 2 writes dk and dv.
#pragma once

#include "la_common.cuh"
#include "la_params.h"

namespace la {

template <typename T, int HD>
struct BwdTraits {
  using F = FwdTraits<T, HD>;
  static constexpr int kStride = F::kStride;
  static constexpr int kTile = F::kTile;
  static constexpr int kSmemPass1 = TileShape<HD>::kSmemBwdPass1;
  static constexpr int kSmemPass2 = TileShape<HD>::kSmemBwdPass2;
};

// One of dV / dK for the warp's 16 rows and HD/2 columns (see the header comment):
//   out = diag(λ^{n-1-j}) X Hm + (scale·(X Yᵀ) ⊙ Mᵀ) Z
// X, Y, Z: (64, HD) tiles; Hm = H (kHT false: B from sH[d][e] transposed-load) or Hᵀ.
template <typename T, int HD, bool kHT>
__device__ __forceinline__ void bwd_block_out(T* out, int64_t rs, uint32_t uX, uint32_t uY,
                                              uint32_t uZ, uint32_t uH, int rg, int oc0, int n,
                                              int t0, float nl2, float scale, int lane) {
  using P2 = Pack2<T>;
  constexpr int kStride = HD + 8;
  constexpr int kONT = HD / 16;
  const int gq = lane >> 2, tq = lane & 3;
  const int r0 = rg * 16 + gq, r1 = r0 + 8;
  // 1) P = scale · (X Yᵀ) ⊙ Mᵀ, kept packed as the A fragments of the k-steps τ (16 regs
  //    instead of 32 floats: the state gradient already holds 64 registers)
  uint32_t pa[4][4];
  {
    float p_acc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) p_acc[nt][i] = 0.f;
#pragma unroll 2  // bounded: the state gradient holds 64 registers
    for (int ks = 0; ks < HD / 16; ++ks) {
      uint32_t a[4];
      ldsm_x4(a, addr_a(uX, kStride, rg * 16, ks * 16, lane));
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        if (np >= rg) {  // τ < j is masked: skip key tiles left of the warp's rows
          uint32_t bb[4];
          ldsm_x4(bb, addr_bnk(uY, kStride, np * 16, ks * 16, lane));
          mma16816<T>(p_acc[2 * np], a, bb[0], bb[1]);
          mma16816<T>(p_acc[2 * np + 1], a, bb[2], bb[3]);
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      mask_decay_pack<T, true>(pa[kk], p_acc + 2 * kk, kk, kk >= rg, r0, r1, tq, nl2, scale);
  }
  // 2) out = diag(λ^{n-1-j}) X Hm + P Z
  float acc[kONT][4];
#pragma unroll
  for (int nt = 0; nt < kONT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
#pragma unroll 2
  for (int ks = 0; ks < HD / 16; ++ks) {
    uint32_t a[4];
    ldsm_x4(a, addr_a(uX, kStride, rg * 16, ks * 16, lane));
#pragma unroll
    for (int np = 0; np < kONT / 2; ++np) {
      uint32_t bb[4];
      if (kHT)
        ldsm_x4(bb, addr_bnk(uH, kStride, oc0 + np * 16, ks * 16, lane));
      else
        ldsm_x4_t(bb, addr_bkn(uH, kStride, oc0 + np * 16, ks * 16, lane));
      mma16816<T>(acc[2 * np], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
  const float f0 = r0 < n ? decay_pow(nl2, (float)(n - 1 - r0)) : 0.f;
  const float f1 = r1 < n ? decay_pow(nl2, (float)(n - 1 - r1)) : 0.f;
#pragma unroll
  for (int nt = 0; nt < kONT; ++nt) {
    acc[nt][0] *= f0; acc[nt][1] *= f0;
    acc[nt][2] *= f1; acc[nt][3] *= f1;
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk >= rg) mma_a_bkn<T>(acc, pa[kk], uZ, kStride, oc0, kk * 16, lane);
  }
#pragma unroll
  for (int nt = 0; nt < kONT; ++nt) {
    const int col = oc0 + nt * 8 + 2 * tq;
    if (r0 < n)
      *reinterpret_cast<uint32_t*>(out + (int64_t)(t0 + r0) * rs + col) = P2::pack(acc[nt][0], acc[nt][1]);
    if (r1 < n)
      *reinterpret_cast<uint32_t*>(out + (int64_t)(t0 + r1) * rs + col) = P2::pack(acc[nt][2], acc[nt][3]);
  }
}

// Pass 1 is capped at 128 registers so that two CTAs share an SM.
template <typename T, int HD, bool kPass1>
__global__ void __launch_bounds__(256, kPass1 ? 2 : 1) la_bwd_dkdv_kernel(const BwdParams p) {
  using Tr = BwdTraits<T, HD>;
  using F = FwdTraits<T, HD>;
  constexpr int kStride = Tr::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int g = blockIdx.x, h = blockIdx.y;
  const SegInfo si = get_seg(p.seg, g);
  if (!si.valid) return;
  if (kPass1 && si.seg == 0) return;  // nobody reads the first segment's local gradient

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float nl2 = p.slope ? -p.slope[h] * 1.4426950408889634f : 0.f;
  const int64_t sidx = (int64_t)si.seq * p.seg.H + h;
  const int64_t widx = (int64_t)g * p.seg.H + h;
  const SegRows rows = seg_rows(p.seg, si, h);
  const T* qg = rows.at<const T>(p.q, p.q_bs, p.q_hs, p.q_rs);
  const T* kg = rows.at<const T>(p.k, p.k_bs, p.k_hs, p.k_rs);
  const T* vg = rows.at<const T>(p.v, p.v_bs, p.v_hs, p.v_rs);
  const T* dog = rows.at<const T>(p.dout, p.do_bs, p.do_hs, p.do_rs);
  T* dkg = kPass1 ? nullptr : rows.at<T>(p.dk, p.dk_bs, p.dk_hs, p.dk_rs);
  T* dvg = kPass1 ? nullptr : rows.at<T>(p.dv, p.dv_bs, p.dv_hs, p.dv_rs);

  // stage st: Q at tile 2·st, dO at 2·st + 1, K at 4 + 2·st, V at 5 + 2·st; H after them
  auto sQ = [&](int st) { return smem + (2 * st) * Tr::kTile; };
  auto sO = [&](int st) { return smem + (2 * st + 1) * Tr::kTile; };
  auto sK = [&](int st) { return smem + (4 + 2 * st) * Tr::kTile; };
  auto sV = [&](int st) { return smem + (5 + 2 * st) * Tr::kTile; };
  T* sH = smem + 8 * Tr::kTile;

  const int sm0 = (warp % F::kSWM) * 16;
  const int sn0 = (warp / F::kSWM) * F::kSTN;
  float h_acc[F::kSNT][4];
  if (kPass1 || (si.seg == si.nseg - 1 && p.dstate_in == nullptr)) {
#pragma unroll
    for (int nt = 0; nt < F::kSNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) h_acc[nt][i] = 0.f;
  } else if (si.seg == si.nseg - 1) {
    load_state(p.dstate_in + sidx * HD * HD, HD, 1, h_acc, sm0, sn0, lane);
  } else {
    load_state(p.ws + widx * HD * HD, HD, 1, h_acc, sm0, sn0, lane);
  }
  if (!kPass1) state_to_smem<T>(sH, kStride, h_acc, sm0, sn0, lane);

  const int nblk = (si.len + 63) / 64;
  // iteration it works on block nblk - 1 - it (the last, possibly partial, block first)
  auto issue = [&](int it) {
    const int b = nblk - 1 - it;
    const int t0 = b * 64, n = min(64, si.len - t0), st = it & 1;
    load_tile<HD>(sQ(st), qg, p.q_rs, t0, n, tid);
    load_tile<HD>(sO(st), dog, p.do_rs, t0, n, tid);
    if (!kPass1) {
      load_tile<HD>(sK(st), kg, p.k_rs, t0, n, tid);
      load_tile<HD>(sV(st), vg, p.v_rs, t0, n, tid);
    }
  };
  if (nblk > 0) issue(0);
  cp_async_commit();

  const int rg = warp & 3;
  const int oc0 = (warp >> 2) * (HD / 2);

  for (int it = 0; it < nblk; ++it) {
    if (it + 1 < nblk) issue(it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int st = it & 1;
    const int b = nblk - 1 - it;
    const int t0 = b * 64, n = min(64, si.len - t0);
    const uint32_t uQ = smem_u32(sQ(st)), uO = smem_u32(sO(st));
    if (!kPass1) {
      const uint32_t uK = smem_u32(sK(st)), uV = smem_u32(sV(st)), uH = smem_u32(sH);
      bwd_block_out<T, HD, false>(dvg, p.dv_rs, uK, uQ, uO, uH, rg, oc0, n, t0, nl2, p.scale, lane);
      bwd_block_out<T, HD, true>(dkg, p.dk_rs, uV, uO, uQ, uH, rg, oc0, n, t0, nl2, p.scale, lane);
    }
    // H <- λ^n H + scale · (diag(λ^{j+1}) Q)ᵀ dO
    state_update<T, F::kSNT>(h_acc, uQ, uO, kStride, sm0, sn0, n, nl2, 1.f, 1.f, p.scale, lane);
    __syncthreads();
    if (!kPass1 && it + 1 < nblk) state_to_smem<T>(sH, kStride, h_acc, sm0, sn0, lane);
  }
  cp_async_wait<0>();

  if (kPass1) {
    store_state(p.ws + widx * HD * HD, HD, 1, h_acc, sm0, sn0, lane);
  } else if (si.seg == 0 && p.dstate_out != nullptr) {
    store_state(p.dstate_out + sidx * HD * HD, HD, 1, h_acc, sm0, sn0, lane);
  }
}

template <typename T, int HD>
void run_bwd(const BwdParams& p, bool pass1, cudaStream_t stream) {
  using Tr = BwdTraits<T, HD>;
  const dim3 grid(p.seg.num_segs, p.seg.H);
  if (pass1) {
    auto kernel = la_bwd_dkdv_kernel<T, HD, true>;
    constexpr int smem = Tr::kSmemPass1;
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    kernel<<<grid, 256, smem, stream>>>(p);
  } else {
    auto kernel = la_bwd_dkdv_kernel<T, HD, false>;
    constexpr int smem = Tr::kSmemPass2;
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    kernel<<<grid, 256, smem, stream>>>(p);
  }
}

}  // namespace la
