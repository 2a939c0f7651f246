// The coordinate-wise rules as the CPU and CUDA kernels number them. Plain
// C++ (see cpu/coordinate_kernel.h).
#pragma once

namespace robustagg {

// kMeaMed also serves mean_around_median (keep = n - f).
enum class ColumnRule : int { kMedian = 0, kTrimmedMean = 1, kMeaMed = 2, kMean = 3 };

}  // namespace robustagg
