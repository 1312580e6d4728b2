// Instantiation only: the backward dk/dv kernels for __nv_bfloat16, D = E = 128.
#include "la_bwd_kernel.cuh"

namespace la {
template void run_bwd<__nv_bfloat16, 128>(const BwdParams&, bool, cudaStream_t);
}  // namespace la
