// Instantiation only: the backward dk/dv kernels for __half, D = E = 128.
#include "la_bwd_kernel.cuh"

namespace la {
template void run_bwd<__half, 128>(const BwdParams&, bool, cudaStream_t);
}  // namespace la
