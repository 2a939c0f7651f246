// The column kernels built for the avx512 instruction set; chosen at run time.
#include <cstdint>
#include <utility>

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,popcnt")
#endif
#define ROBUSTAGG_ISA_SUFFIX avx512
#define ROBUSTAGG_VEC_BYTES 64
#include "cpu/coordinate_kernel_impl.h"
