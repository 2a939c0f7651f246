// What the CPU and CUDA kernels of the fused updates share: argument checks
// and the arithmetic of one element, so both devices give the same bits.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include "common.h"

namespace robustagg {

inline void check_momentum_update(at::TensorList buffers, at::TensorList grads, double beta) {
  constexpr const char* kRule = "momentum_update_";
  check_tensor_pairs(buffers, grads, "buffers", "grads", kRule);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0.0 && beta <= 1.0,
                    message(kRule, ": beta must be in [0, 1], got beta=", beta));
}

// keep * m + take * g with keep = beta and take = 1 - beta (computed in
// double, then rounded to Acc): each product and the sum rounded once, as
// the builds forbid contracting them into an FMA.
template <typename T>
C10_HOST_DEVICE inline T momentum_value(T m, T g, at::opmath_type<T> keep, at::opmath_type<T> take) {
  using Acc = at::opmath_type<T>;
  return static_cast<T>(keep * static_cast<Acc>(m) + take * static_cast<Acc>(g));
}

}  // namespace robustagg
