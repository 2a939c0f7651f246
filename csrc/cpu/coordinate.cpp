// CPU kernels of the coordinate-wise rules (SPEC 2): mean, coordinate_median,
// trimmed_mean, meamed. The column kernels (coordinate_kernel_impl.h), built
// for the best instruction set of the CPU, run over column ranges in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "coordinate_ops.h"
#include "cpu/coordinate_kernel.h"
#include "cpu/input_kind.h"
#include "cpu/isa.h"
#include "sorting_network.h"

namespace robustagg::cpu {
namespace {

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
  if (n <= kCpuMaxFixedRows) return {};
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
at::Tensor run_columns(const at::Tensor& X_in, ColumnRule rule, int64_t f, const double* weights, double weight_sum) {
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
  base.rule = rule;
  base.f = f;
  base.comparators = comparators.data();
  base.n_comparators = static_cast<int64_t>(comparators.size() / 2);
  base.weights = weights;
  base.weight_sum = weight_sum;

  base.chunk_blocks = std::max<int64_t>(1, kStageBytes / (n * kLaneBytes));

  const int64_t stage_bytes = needs_scratch ? base.chunk_blocks * n * kLaneBytes : 0;

  at::parallel_for(0, d, kCpuColumnsPerTask, [&](int64_t begin, int64_t end) {
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

// The CPU side of coordinate_ops.h.
struct Cpu {
  static at::Tensor select(const at::Tensor& X, ColumnRule rule, int64_t f) {
    return run_columns(X, rule, f, nullptr, 0.0);
  }
  static at::Tensor mean(const at::Tensor& X, const double* weights, double weight_sum) {
    return run_columns(X, ColumnRule::kMean, 0, weights, weight_sum);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("mean", &mean<Cpu>);
  m.impl("coordinate_median", &coordinate_median<Cpu>);
  m.impl("trimmed_mean", &trimmed_mean<Cpu>);
  m.impl("meamed", &meamed<Cpu>);
  m.impl("mean_around_median", &mean_around_median<Cpu>);
}

}  // namespace robustagg::cpu
