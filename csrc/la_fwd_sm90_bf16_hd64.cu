// Instantiation only: the sm_90a forward (both passes) for __nv_bfloat16, D = E = 64.
#include "la_state_sm90.cuh"

namespace la {
template void run_fwd_sm90<__nv_bfloat16, 64>(const FwdParams&, bool, bool, cudaStream_t);
}  // namespace la
