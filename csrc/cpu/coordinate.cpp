// CPU kernels of the coordinate-wise rules (SPEC 2): mean, coordinate_median,
// trimmed_mean, meamed. The column kernels (coordinate_kernel_impl.h), built
// for the best instruction set of the CPU, run over column ranges in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "cpu/coordinate_kernel.h"
#include "cpu/input_kind.h"
#include "cpu/isa.h"
#include "cpu/sorting_network.h"

namespace robustagg::cpu {
namespace {

// Columns per parallel task: large enough to amortise the task, small enough
// to balance the cores. A multiple of every lane count.
constexpr int64_t kColumnsPerTask = 4096;

using ColumnKernel = void (*)(const ColumnArgs&);

ColumnKernel column_kernel() {
  switch (active_isa()) {
    case Isa::kAvx512:
      return column_kernel_avx512;
    case Isa::kAvx2:
      return column_kernel_avx2;
    default:
      return column_kernel_baseline;
  }
}

// For n above the compile-time networks: the comparators that the sorted
// positions a rule reads depend on (the middle one or two, the kept band, or
// every position for MeaMed).
std::vector<int32_t> runtime_network(ColumnRule rule, int64_t n, int64_t f) {
  if (n <= kMaxFixedRows) return {};
  const std::vector<int32_t> full = batcher_network(n);
  switch (rule) {
    case ColumnRule::kMedian:
      return prune_network(full, n, (n - 1) / 2, n / 2 + 1);
    case ColumnRule::kTrimmedMean:
      return prune_network(full, n, f, n - f);
    default:
      return full;
  }
}

// Runs `rule` over all columns of X. float32 results are written directly;
// other dtypes go through a float64 buffer (O(d)) so that each result is
// rounded once from float64, as the reference rounds.
at::Tensor run_columns(const at::Tensor& X_in, ColumnRule rule, int64_t f, const double* weights,
                       double weight_sum) {
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  const at::ScalarType dtype = X.scalar_type();
  const bool direct = dtype == at::kFloat;
  at::Tensor out = at::empty({d}, X.options().dtype(direct ? at::kFloat : at::kDouble));
  if (d == 0) return direct ? out : out.to(dtype);

  const std::vector<int32_t> comparators = runtime_network(rule, n, f);
  const ColumnKernel kernel = column_kernel();
  const bool needs_scratch = rule != ColumnRule::kMean;
  ColumnArgs base{};
  base.x = X.data_ptr();
  base.n = n;
  base.row_stride = n > 1 ? X.stride(0) : d;
  base.kind = input_kind(dtype);
  base.out = out.data_ptr();
  base.rule = static_cast<int>(rule);
  base.f = f;
  base.comparators = comparators.data();
  base.n_comparators = static_cast<int64_t>(comparators.size() / 2);
  base.weights = weights;
  base.weight_sum = weight_sum;

  base.chunk_blocks = std::max<int64_t>(1, kStageBytes / (n * kLaneBytes));

  const int64_t stage_bytes = needs_scratch ? base.chunk_blocks * n * kLaneBytes : 0;

  at::parallel_for(0, d, kColumnsPerTask, [&](int64_t begin, int64_t end) {
    // Per task: the staged keys of one chunk, aligned to kLaneBytes.
    std::vector<int64_t> scratch(static_cast<size_t>((stage_bytes + kLaneBytes) / 8));
    const uintptr_t addr = reinterpret_cast<uintptr_t>(scratch.data());
    ColumnArgs args = base;
    args.col_begin = begin;
    args.col_end = end;
    args.scratch = reinterpret_cast<void*>((addr + kLaneBytes - 1) / kLaneBytes * kLaneBytes);
    kernel(args);
  });
  return direct ? out : out.to(dtype);
}

at::Tensor coordinate_median_cpu(const at::Tensor& X) {
  check_matrix(X, "coordinate_median");
  return run_columns(X, ColumnRule::kMedian, 0, nullptr, 0.0);
}

at::Tensor trimmed_mean_cpu(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "trimmed_mean");
  return run_columns(X, ColumnRule::kTrimmedMean, f, nullptr, 0.0);
}

at::Tensor meamed_cpu(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "meamed");
  return run_columns(X, ColumnRule::kMeaMed, f, nullptr, 0.0);
}

at::Tensor mean_around_median_cpu(const at::Tensor& X, int64_t keep) {
  check_keep(X, keep, "mean_around_median");
  return run_columns(X, ColumnRule::kMeaMed, X.size(0) - keep, nullptr, 0.0);
}

at::Tensor mean_cpu(const at::Tensor& X, const std::optional<at::Tensor>& weights) {
  check_matrix(X, "mean");
  if (!weights.has_value()) return run_columns(X, ColumnRule::kMean, 0, nullptr, static_cast<double>(X.size(0)));
  double weight_sum = 0.0;
  const at::Tensor w64 = check_weights(X, *weights, "mean", &weight_sum);
  return run_columns(X, ColumnRule::kMean, 0, w64.const_data_ptr<double>(), weight_sum);
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("mean", &mean_cpu);
  m.impl("coordinate_median", &coordinate_median_cpu);
  m.impl("trimmed_mean", &trimmed_mean_cpu);
  m.impl("meamed", &meamed_cpu);
  m.impl("mean_around_median", &mean_around_median_cpu);
}

}  // namespace robustagg::cpu
