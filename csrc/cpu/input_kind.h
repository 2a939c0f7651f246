// The kernels' InputKind of a supported dtype; for the glue files, which are
// built for the baseline instruction set (the kernel files include no ATen).
#pragma once

#include <ATen/ATen.h>

#include "cpu/coordinate_kernel.h"

namespace robustagg::cpu {

inline InputKind input_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return InputKind::kF32;
    case at::kDouble:
      return InputKind::kF64;
    case at::kHalf:
      return InputKind::kF16;
    default:
      return InputKind::kBF16;
  }
}

}  // namespace robustagg::cpu
