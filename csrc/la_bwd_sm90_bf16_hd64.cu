// Instantiation only: the fused sm_90a dk/dv sweep for __nv_bfloat16, D = E = 64.
#include "la_bwd_sm90.cuh"

namespace la {
template void run_bwd_sm90<__nv_bfloat16, 64>(const BwdParams&, bool, cudaStream_t);
}  // namespace la
