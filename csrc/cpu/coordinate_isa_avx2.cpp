// The column kernels built for the avx2 instruction set; chosen at run time.
#include <cstdint>
#include <utility>

#if defined(__x86_64__)
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt")
#endif
#define ROBUSTAGG_ISA_SUFFIX avx2
#define ROBUSTAGG_VEC_BYTES 32
#include "cpu/coordinate_kernel_impl.h"
