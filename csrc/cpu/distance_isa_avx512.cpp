// The distance kernels built for the avx512 instruction set; chosen at run time.
#include <cstdint>

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,popcnt")
#endif
// Sums over d may use fused multiply-add here (the build disables contraction
// elsewhere so that the selection rules round alike on CPU and CUDA).
#pragma GCC optimize("fp-contract=fast")
#define ROBUSTAGG_ISA_SUFFIX avx512
#define ROBUSTAGG_VEC_BYTES 64
#include "cpu/distance_kernel_impl.h"
