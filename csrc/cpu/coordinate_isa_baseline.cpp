// The column kernels built for the baseline instruction set; chosen at run time.
#include <cstdint>
#include <utility>

// Baseline x86-64 (SSE2) or the target's default instruction set.
#define ROBUSTAGG_ISA_SUFFIX baseline
#define ROBUSTAGG_VEC_BYTES 16
#include "cpu/coordinate_kernel_impl.h"
