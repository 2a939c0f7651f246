// The coordinate-wise rules (SPEC 2) written once for both devices: each op
// checks its arguments and names the rule its kernels run
// (cpu/coordinate.cpp, cuda/coordinate.cu). Device provides, as static members:
//   select(X, rule, f): a selection rule over every column of X;
//   mean(X, weights, weight_sum): sum_i w_i x_i / weight_sum per column, where
//     weights is null (every weight 1) or X.size(0) float64 numbers on X's device.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "column_rule.h"
#include "common.h"

namespace robustagg {

template <typename Device>
at::Tensor coordinate_median(const at::Tensor& X) {
  check_matrix(X, "coordinate_median");
  return Device::select(X, ColumnRule::kMedian, 0);
}

template <typename Device>
at::Tensor trimmed_mean(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "trimmed_mean");
  return Device::select(X, ColumnRule::kTrimmedMean, f);
}

template <typename Device>
at::Tensor meamed(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "meamed");
  return Device::select(X, ColumnRule::kMeaMed, f);
}

template <typename Device>
at::Tensor mean_around_median(const at::Tensor& X, int64_t keep) {
  check_keep(X, keep, "mean_around_median");
  return Device::select(X, ColumnRule::kMeaMed, X.size(0) - keep);
}

template <typename Device>
at::Tensor mean(const at::Tensor& X, const std::optional<at::Tensor>& weights) {
  check_matrix(X, "mean");
  if (!weights.has_value()) return Device::mean(X, nullptr, static_cast<double>(X.size(0)));
  double weight_sum = 0.0;
  const at::Tensor w64 = check_weights(X, *weights, "mean", &weight_sum);
  return Device::mean(X, w64.const_data_ptr<double>(), weight_sum);
}

}  // namespace robustagg
