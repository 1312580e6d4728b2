// Instantiation only: the sm_90a forward (both passes) for __half, D = E = 128.
#include "la_state_sm90.cuh"

namespace la {
template void run_fwd_sm90<__half, 128>(const FwdParams&, bool, bool, cudaStream_t);
}  // namespace la
