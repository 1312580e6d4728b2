// Instantiation only: the backward dk/dv kernels for __half, D = E = 64.
#include "la_bwd_kernel.cuh"

namespace la {
template void run_bwd<__half, 64>(const BwdParams&, bool, cudaStream_t);
}  // namespace la
