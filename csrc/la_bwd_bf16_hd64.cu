// Instantiation only: the backward dk/dv kernels for __nv_bfloat16, D = E = 64.
#include "la_bwd_kernel.cuh"

namespace la {
template void run_bwd<__nv_bfloat16, 64>(const BwdParams&, bool, cudaStream_t);
}  // namespace la
