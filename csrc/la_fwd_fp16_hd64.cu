// Instantiation only: the forward kernels for __half, D = E = 64 (one file per pair so
// that builds run in parallel).
#include "la_fwd_kernel.cuh"

namespace la {
template void run_fwd<__half, 64>(const FwdParams&, bool, int, cudaStream_t);
}  // namespace la
