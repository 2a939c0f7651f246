// CPU kernels of the coordinate-wise rules (SPEC 2): mean, coordinate_median,
// trimmed_mean, meamed. The selection rules run the lane-wise sorting-network
// kernel (coordinate_kernel_impl.h) over column blocks in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common.h"
#include "cpu/coordinate_kernel.h"
#include "cpu/isa.h"
#include "cpu/sorting_network.h"

namespace robustagg::cpu {
namespace {

// Columns per parallel task: large enough to amortise the task, small enough
// to balance the cores. A multiple of every lane count.
constexpr int64_t kColumnsPerTask = 4096;

InputKind input_kind(at::ScalarType t) {
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

using SelectFn = void (*)(const SelectArgs&);

SelectFn select_kernel() {
  switch (active_isa()) {
    case Isa::kAvx512:
      return select_columns_avx512;
    case Isa::kAvx2:
      return select_columns_avx2;
    default:
      return select_columns_baseline;
  }
}

// Sorted positions each rule reads: the middle one or two, the kept band, or
// (MeaMed) every position.
std::vector<int32_t> network_for(SelectMode mode, int64_t n, int64_t f) {
  const std::vector<int32_t> full = batcher_network(n);
  switch (mode) {
    case SelectMode::kMedian:
      return prune_network(full, n, (n - 1) / 2, n / 2 + 1);
    case SelectMode::kTrimmedMean:
      return prune_network(full, n, f, n - f);
    default:
      return full;
  }
}

at::Tensor select_cpu(const at::Tensor& X_in, SelectMode mode, int64_t f) {
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  const at::ScalarType dtype = X.scalar_type();
  // float32 results are written directly; other dtypes go through a float64
  // buffer (O(d)) so that each result is rounded once, from float64.
  const bool direct = dtype == at::kFloat;
  at::Tensor out = at::empty({d}, X.options().dtype(direct ? at::kFloat : at::kDouble));
  if (d == 0) return direct ? out : out.to(dtype);

  const std::vector<int32_t> comparators = network_for(mode, n, f);
  const SelectFn kernel = select_kernel();
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const void* x = X.data_ptr();
  void* out_ptr = out.data_ptr();
  const InputKind kind = input_kind(dtype);

  at::parallel_for(0, d, kColumnsPerTask, [&](int64_t begin, int64_t end) {
    // Scratch for one block of keys: n vectors of kSelectLaneBytes, aligned.
    std::vector<int64_t> scratch(static_cast<size_t>(n * kSelectLaneBytes / 8 + kSelectLaneBytes / 8));
    auto addr = reinterpret_cast<uintptr_t>(scratch.data());
    addr = (addr + kSelectLaneBytes - 1) / kSelectLaneBytes * kSelectLaneBytes;
    SelectArgs args{x,   n,    row_stride, begin, end, kind, out_ptr, static_cast<int>(mode), f,
                    comparators.data(), static_cast<int64_t>(comparators.size() / 2), reinterpret_cast<void*>(addr)};
    kernel(args);
  });
  return direct ? out : out.to(dtype);
}

at::Tensor coordinate_median_cpu(const at::Tensor& X) {
  check_matrix(X, "coordinate_median");
  return select_cpu(X, SelectMode::kMedian, 0);
}

at::Tensor trimmed_mean_cpu(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "trimmed_mean");
  return select_cpu(X, SelectMode::kTrimmedMean, f);
}

at::Tensor meamed_cpu(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "meamed");
  return select_cpu(X, SelectMode::kMeaMed, f);
}

// Weighted mean, accumulated in float64 row by row over column blocks (the
// block of accumulators stays in L1 while the rows stream past).
template <typename T>
void weighted_mean_columns(const T* x, int64_t n, int64_t row_stride, const double* w, double wsum,
                           int64_t begin, int64_t end, double* acc, double* out) {
  for (int64_t j = begin; j < end; ++j) acc[j - begin] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * row_stride;
    const double wi = w == nullptr ? 1.0 : w[i];
    for (int64_t j = begin; j < end; ++j) acc[j - begin] += wi * static_cast<double>(row[j]);
  }
  for (int64_t j = begin; j < end; ++j) out[j] = acc[j - begin] / wsum;
}

at::Tensor mean_cpu(const at::Tensor& X_in, const std::optional<at::Tensor>& weights) {
  check_matrix(X_in, "mean");
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  at::Tensor w64;
  double wsum = static_cast<double>(n);
  if (weights.has_value()) {
    w64 = check_weights(X, *weights, "mean", &wsum);
  }
  const double* w = weights.has_value() ? w64.data_ptr<double>() : nullptr;
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  at::Tensor out = at::empty({d}, X.options().dtype(at::kDouble));
  if (d == 0) return out.to(X.scalar_type());
  double* out_ptr = out.data_ptr<double>();
  constexpr int64_t kBlock = 1024;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "mean_cpu", [&] {
    const scalar_t* x = X.const_data_ptr<scalar_t>();
    at::parallel_for(0, d, kColumnsPerTask, [&](int64_t begin, int64_t end) {
      double acc[kBlock];
      for (int64_t b = begin; b < end; b += kBlock) {
        const int64_t e = b + kBlock < end ? b + kBlock : end;
        weighted_mean_columns<scalar_t>(x, n, row_stride, w, wsum, b, e, acc, out_ptr);
      }
    });
  });
  return out.to(X.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("mean", &mean_cpu);
  m.impl("coordinate_median", &coordinate_median_cpu);
  m.impl("trimmed_mean", &trimmed_mean_cpu);
  m.impl("meamed", &meamed_cpu);
}

}  // namespace robustagg::cpu
