// The distance kernels built for the baseline instruction set; chosen at run time.
#include <cstdint>

// Baseline x86-64 (SSE2) or the target's default instruction set.
// Sums over d may use fused multiply-add here (the build disables contraction
// elsewhere so that the selection rules round alike on CPU and CUDA).
#pragma GCC optimize("fp-contract=fast")
#define ROBUSTAGG_ISA_SUFFIX baseline
#define ROBUSTAGG_VEC_BYTES 16
#include "cpu/distance_kernel_impl.h"
