// Hopper (sm_90a) building blocks in PTX: mbarriers, TMA tile loads, warpgroup MMA (wgmma)
// with shared-memory descriptors, named barriers and register reallocation.
//
// Shared-memory tiles are written by TMA with the 128-byte swizzle: a tile is stored as
// boxes of (rows, 64 elements) with 128-byte rows, and inside each 1 KiB group of 8 rows the
// 16-byte chunk c of row r sits at chunk c ^ (r % 8). Every box starts 1 KiB-aligned.
// Two descriptor kinds read such boxes (PTX ISA, "Matrix Descriptor Format"):
//   K-major  (the reduction dim is the contiguous one, e.g. Q or K in Q·Kᵀ): rows are M or N,
//            8-row groups 1024 B apart (stride byte offset); a k16 step adds 32 B.
//   MN-major (the M/N dim is contiguous, e.g. V in P·V, rows are the reduction dim): 64
//            columns per box, 8-row groups 1024 B apart; a k16 step adds 16 rows = 2048 B.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LA_SM90_ENABLED 1
#endif

namespace la {
namespace sm90 {

// ------------------------------------------------------------------------------ mbarrier

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// Makes barrier initialisation visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Blocks until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "LA_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LA_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}


// ----------------------------------------------------------------------------------- TMA

__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// One box of a 4-D tensor map (coordinates innermost first) into shared memory; completes
// `bar`'s transaction count by the box's bytes. Out-of-range elements arrive as zeros.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// One box from shared memory into a 4-D tensor map (elements outside it are not written),
// in the issuing thread's bulk group.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, uint32_t src, int c0, int c1,
                                             int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// `bytes` (a multiple of 16) of contiguous global memory into shared memory, completing `bar`'s
// transaction count (no tensor map).
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// The reverse, in the issuing thread's bulk group.
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// The issuing thread's bulk stores have read their shared memory (kRead) or completed.
template <bool kRead>
__device__ __forceinline__ void bulk_wait_all() {
  if constexpr (kRead)
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  else
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// The TMA ring of a warp-specialised kernel: kStages stages, each with kGroups `full` barriers
// (the producer's one arrival with the byte count of a group of the stage's tiles: maps
// [g·kMaps/kGroups, (g+1)·kMaps/kGroups), loaded in that order, so a consumer can start on the
// first group while the next lands) and an `empty` one (the consumers' `releasers` arrivals
// free the stage). `bars` holds full[kGroups][kStages], then empty[kStages].
template <int kStages, int kGroups = 1>
struct Ring {
  static constexpr int kBarrierBytes = 8 * (kGroups + 1) * kStages;
  uint32_t bars;
  __device__ __forceinline__ uint32_t full(int s, int g = 0) const {
    return bars + 8 * (g * kStages + s);
  }
  __device__ __forceinline__ uint32_t empty(int s) const {
    return bars + 8 * (kGroups * kStages + s);
  }
  // Thread 0 initialises the barriers; every thread of the CTA calls it (it synchronises).
  __device__ __forceinline__ void init(int releasers) const {
    if (threadIdx.x == 0) {
      for (int s = 0; s < kStages; ++s) {
#pragma unroll
        for (int g = 0; g < kGroups; ++g) mbar_init(full(s, g), 1);
        mbar_init(empty(s), releasers);
      }
      fence_barrier_init();
    }
    __syncthreads();
  }
  // The producer thread: prefetches the maps' descriptors, then for each of nblk 64-token
  // blocks in processing order (from token tok0 on, the last block first with `reverse`)
  // waits until its stage is free and loads the block of every map into its tile of the stage,
  // `tile(s, i)` for map i, as kBoxes (64 tokens, 64 columns) 16-bit boxes side by side.
  template <int kBoxes, int kMaps, typename Tile>
  __device__ __forceinline__ void produce(const CUtensorMap* const (&maps)[kMaps], int nblk,
                                          bool reverse, int tok0, int h, int b,
                                          Tile&& tile) const {
    static_assert(kMaps % kGroups == 0, "a whole number of maps per group");
    constexpr int kGroupMaps = kMaps / kGroups;
    constexpr uint32_t kBoxBytes = 64 * 64 * 2;
#pragma unroll
    for (int i = 0; i < kMaps; ++i) tma_prefetch_desc(maps[i]);
    for (int c = 0; c < nblk; ++c) {
      const int s = c % kStages;
      if (c >= kStages) mbar_wait(empty(s), ((c / kStages) - 1) & 1);
      const int tok = tok0 + (reverse ? nblk - 1 - c : c) * 64;
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        mbar_expect_tx(full(s, g), kGroupMaps * kBoxes * kBoxBytes);
#pragma unroll
        for (int x = 0; x < kBoxes; ++x)
#pragma unroll
          for (int i = g * kGroupMaps; i < (g + 1) * kGroupMaps; ++i)
            tma_load_4d(tile(s, i) + x * kBoxBytes, maps[i], full(s, g), x * 64, tok, h, b);
      }
    }
  }
};

// ------------------------------------------------------------------- barriers, registers

// Barrier `id` (1..15) over `threads` threads (a warpgroup: 128).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Generic-proxy shared-memory writes become visible to wgmma/TMA reads after this fence
// (in each writing thread) and a barrier.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
template <int kRegs>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---------------------------------------------------------------------------------- wgmma

// Shared-memory matrix descriptor for a 128-byte-swizzled operand (see the header comment):
// start address, leading byte offset (only read for MN-major operands wider than 64
// columns: the distance between 64-column boxes), stride byte offset 1024 B.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lead_bytes = 16) {
  uint64_t d = 0;
  d |= (uint64_t)((addr & 0x3FFFF) >> 4);
  d |= (uint64_t)((lead_bytes & 0x3FFFF) >> 4) << 16;
  d |= (uint64_t)(1024 >> 4) << 32;
  d |= (uint64_t)1 << 62;  // 128-byte swizzle
  return d;
}

// The descriptor of the operand `off` bytes (a multiple of 16) after the one of descriptor d:
// the start address field holds the shared-window address / 16, below 2^14 (shared memory is
// under 256 KiB), so the sum stays in the field. One add instead of the descriptor's
// construction from an address (ptxas builds it anew for each wgmma).
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t off) {
  return (d & 0xFFFFFFFF00000000ull) | (uint32_t)((uint32_t)d + (off >> 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across wgmma issue/wait.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

#define LA_ACC32(x)                                                                            \
  "+f"(x[0]), "+f"(x[1]), "+f"(x[2]), "+f"(x[3]), "+f"(x[4]), "+f"(x[5]), "+f"(x[6]),          \
      "+f"(x[7]), "+f"(x[8]), "+f"(x[9]), "+f"(x[10]), "+f"(x[11]), "+f"(x[12]), "+f"(x[13]),  \
      "+f"(x[14]), "+f"(x[15]), "+f"(x[16]), "+f"(x[17]), "+f"(x[18]), "+f"(x[19]),            \
      "+f"(x[20]), "+f"(x[21]), "+f"(x[22]), "+f"(x[23]), "+f"(x[24]), "+f"(x[25]),            \
      "+f"(x[26]), "+f"(x[27]), "+f"(x[28]), "+f"(x[29]), "+f"(x[30]), "+f"(x[31])
#define LA_D32                                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

// acc (64 × 64 fp32, this thread's 32) (+)= A · B, A and B from shared memory (descriptors);
// kTransB: B is MN-major; kTransA: A is MN-major (M contiguous, e.g. Kᵀ read from a K box).
// accumulate = false overwrites acc.
template <typename T, bool kTransB, bool kTransA = false>
__device__ __forceinline__ void wgmma_ss_64x64(float (&acc)[32], uint64_t da, uint64_t db,
                                               bool accumulate) {
  const int sc = accumulate ? 1 : 0;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LA_D32
        ", %32, %33, p, 1, 1, %36, %35;\n}\n"
        : LA_ACC32(acc)
        : "l"(da), "l"(db), "r"(sc), "n"(kTransB ? 1 : 0), "n"(kTransA ? 1 : 0));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LA_D32
        ", %32, %33, p, 1, 1, %36, %35;\n}\n"
        : LA_ACC32(acc)
        : "l"(da), "l"(db), "r"(sc), "n"(kTransB ? 1 : 0), "n"(kTransA ? 1 : 0));
  }
}

// acc (64 × 64 fp32) += A · B, A from registers (the mma.m16n8k16 A-fragment layout per warp,
// rows 16·warp.. of the warpgroup's 64), B an MN-major shared-memory operand.
template <typename T>
__device__ __forceinline__ void wgmma_rs_64x64(float (&acc)[32], const uint32_t (&a)[4],
                                               uint64_t db) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : LA_ACC32(acc)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " LA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : LA_ACC32(acc)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  }
}

#undef LA_ACC32
#undef LA_D32

}  // namespace sm90
}  // namespace la
