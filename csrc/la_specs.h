// What the CUDA kernels are compiled for, declared once: the head dims, the input dtypes and
// the shared memory each kernel needs. The extension exports them to Python (_C.head_dims,
// _C.dtypes, _C.smem_bytes), la_launch.cpp switches over them, and the kernels' traits take
// their sizes from TileShape. Each (dtype, head dim) pair has its instantiation files
// la_{fwd,bwd}_<dtype>_hd<D>.cu: a pair listed here without them fails to load (undefined
// symbol), a file for a head dim not listed here fails to compile (TileShape's static_assert).
// How to add a head dim: docs/ARCHITECTURE.md.
#pragma once

// X(D): the head dims, D = E.
#define LA_FOR_EACH_HEAD_DIM(X) X(64) X(128)
// X(C++ element type, at::ScalarType enumerator, Python name): the 16-bit input dtypes.
#define LA_FOR_EACH_DTYPE(X) X(__half, Half, "float16") X(__nv_bfloat16, BFloat16, "bfloat16")

namespace la {

constexpr bool is_head_dim(int hd) {
#define LA_IS_HEAD_DIM(D) hd == D ||
  return LA_FOR_EACH_HEAD_DIM(LA_IS_HEAD_DIM) false;
#undef LA_IS_HEAD_DIM
}

// Tiles of one head dim HD: 64-token blocks staged as (64, HD) row-major tiles whose rows are
// padded by 8 elements (16 bytes), so that the 8 rows of one ldmatrix phase fall in distinct
// bank groups; 16-bit elements.
template <int HD>
struct TileShape {
  static_assert(is_head_dim(HD), "head dim not listed in LA_FOR_EACH_HEAD_DIM (la_specs.h)");
  static constexpr int kBlock = 64;
  static constexpr int kStride = HD + 8;            // smem row stride (elements)
  static constexpr int kTile = kBlock * kStride;    // one (64, HD) tile
  static constexpr int kStateTile = HD * kStride;   // the 16-bit (HD, HD) state copy
  // Forward, in bytes. Pass 1: [K V] x 2 stages. Pass 2: [K V Q] x stages and the state
  // copy. The dq sweep with d slope terms, pass 2: [K V Q q] x 2, the state copy and its
  // residual, 128 floats of row partials and 2 x 8 of per-warp partials (D = 128: 205 KB).
  static constexpr int kSmemFwdPass1 = 4 * kTile * 2;
  static constexpr int smem_fwd_pass2(int stages) { return (3 * stages * kTile + kStateTile) * 2; }
  static constexpr int kSmemFwdSlopePass2 = (8 * kTile + 2 * kStateTile) * 2 + (128 + 16) * 4;
  // Backward dk/dv. Pass 1: [Q dO] x 2 stages. Pass 2: [Q dO K V] x 2 and the
  // state-gradient copy.
  static constexpr int kSmemBwdPass1 = 4 * kTile * 2;
  static constexpr int kSmemBwdPass2 = (8 * kTile + kStateTile) * 2;
};

// TileShape<D>::smem_fwd_pass2(stages) for a head dim known at run time (0 if not compiled).
inline int smem_fwd_pass2(int hd, int stages) {
#define LA_CASE(D) if (hd == D) return TileShape<D>::smem_fwd_pass2(stages);
  LA_FOR_EACH_HEAD_DIM(LA_CASE)
#undef LA_CASE
  return 0;
}

}  // namespace la
