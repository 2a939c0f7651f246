// CPU kernels of the distance ops (SPEC 3): pairwise squared distances (from a
// shifted Gram matrix), row mixing, row norms with or without the dot
// products with a vector, and the rows' squared distances to a vector. Sums
// over columns are split into a fixed number of column blocks that depends
// only on the shape, and the blocks' partial sums are added in block order,
// so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "cpu/distance_kernel.h"
#include "cpu/input_kind.h"
#include "cpu/isa.h"

namespace robustagg::cpu {
namespace {

// Column blocks of the float64 reductions: at least this many columns each,
// at most kMaxBlocks blocks, and at most kPartialBytes of partial results.
constexpr int64_t kMinBlockColumns = 8192;
constexpr int64_t kMaxBlocks = 256;
constexpr int64_t kPartialBytes = int64_t{32} << 20;
// Staging budget of one Gram task (L2-resident) and the mix chunk.
constexpr int64_t kGramStageBytes = 512 * 1024;
constexpr int64_t kMixChunk = 64;  // staged columns per row: L1-resident for m <= 64
constexpr int64_t kMixColumnsPerTask = 4096;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Kernels {
  void (*gram)(const RowSource&, double*);
  void (*mix)(const RowSource&, const MixTarget&);
  void (*norms)(const RowSource&, double*);
  void (*norms_dots)(const RowSource&, double*, double*);
  void (*sq_distances)(const RowSource&, double*);
};

Kernels kernels() {
  switch (active_isa()) {
    case Isa::kAvx512:
      return {gram_kernel_avx512, mix_kernel_avx512, norms_kernel_avx512, norms_dots_kernel_avx512,
              sq_distances_kernel_avx512};
    case Isa::kAvx2:
      return {gram_kernel_avx2, mix_kernel_avx2, norms_kernel_avx2, norms_dots_kernel_avx2, sq_distances_kernel_avx2};
    default:
      return {gram_kernel_baseline, mix_kernel_baseline, norms_kernel_baseline, norms_dots_kernel_baseline,
              sq_distances_kernel_baseline};
  }
}

// An uninitialised staging buffer aligned to kLaneBytes.
class Scratch {
 public:
  explicit Scratch(int64_t doubles) : storage_(new double[static_cast<size_t>(doubles + kLaneBytes / 8)]) {}
  double* data() {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(storage_.get());
    return reinterpret_cast<double*>((addr + kLaneBytes - 1) / kLaneBytes * kLaneBytes);
  }

 private:
  std::unique_ptr<double[]> storage_;
};

// Column blocks [b * size, (b + 1) * size) of a reduction over d columns whose
// per-block partial result has `partial_doubles` entries.
struct Blocks {
  int64_t count;
  int64_t size;
};

Blocks column_blocks(int64_t d, int64_t partial_doubles) {
  if (d == 0) return {0, 1};
  const int64_t cap = std::clamp<int64_t>(kPartialBytes / (partial_doubles * 8), 1, kMaxBlocks);
  const int64_t count = std::min(ceil_div(d, kMinBlockColumns), cap);
  const int64_t size = ceil_div(ceil_div(d, count), kStageColumns) * kStageColumns;
  return {ceil_div(d, size), size};
}

struct Rows {
  at::Tensor X;       // unit column stride
  at::Tensor center;  // contiguous, or undefined
  RowSource source;
};

Rows rows_of(const at::Tensor& X_in, const std::optional<at::Tensor>& center, const char* rule,
             const char* name = "center") {
  check_rows(X_in, center, rule, name);
  Rows r;
  if (center.has_value()) r.center = center->contiguous();
  r.X = unit_column_stride(X_in);
  const int64_t n = r.X.size(0);
  r.source = RowSource{};
  r.source.x = r.X.const_data_ptr();
  r.source.n = n;
  r.source.row_stride = n > 1 ? r.X.stride(0) : r.X.size(1);
  r.source.center = r.center.defined() ? r.center.const_data_ptr() : nullptr;
  r.source.kind = input_kind(r.X.scalar_type());
  return r;
}

std::tuple<at::Tensor, at::Tensor> pairwise_sq_distances_cpu(const at::Tensor& X_in,
                                                             const std::optional<at::Tensor>& center) {
  const Rows rows = rows_of(X_in, center, "pairwise_sq_distances");
  const int64_t d = rows.X.size(1);
  const int64_t m = rows.source.n + (center.has_value() ? 1 : 0);
  const int64_t mp = ceil_div(m, kTileRows) * kTileRows;
  const int64_t chunk =
      std::clamp<int64_t>(kGramStageBytes / ((mp + 1) * 8) / kStageColumns * kStageColumns, kStageColumns, 2048);
  const Blocks blocks = column_blocks(d, m * m);
  at::Tensor partial = at::zeros({std::max<int64_t>(blocks.count, 1), m, m}, rows.X.options().dtype(at::kDouble));
  double* partial_ptr = partial.mutable_data_ptr<double>();
  const Kernels k = kernels();
  at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
    Scratch scratch((mp + 1) * chunk);
    for (int64_t b = b0; b < b1; ++b) {
      RowSource s = rows.source;
      s.col_begin = b * blocks.size;
      s.col_end = std::min(d, s.col_begin + blocks.size);
      s.scratch = scratch.data();
      s.chunk = chunk;
      k.gram(s, partial_ptr + b * m * m);
    }
  });
  // S = sum of the blocks' upper triangles, in block order.
  std::vector<double> S(static_cast<size_t>(m * m), 0.0);
  for (int64_t b = 0; b < blocks.count; ++b)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = i; j < m; ++j) S[i * m + j] += partial_ptr[(b * m + i) * m + j];
  // A row is finite iff its shifted squared norm is (float64 input whose
  // squared norm overflows counts as not finite: it is infinitely far too).
  at::Tensor finite = at::empty({m}, rows.X.options().dtype(at::kBool));
  bool* fp = finite.mutable_data_ptr<bool>();
  for (int64_t i = 0; i < m; ++i) fp[i] = std::isfinite(S[i * m + i]);
  at::Tensor D = at::empty({m, m}, rows.X.options().dtype(at::kDouble));
  double* Dp = D.mutable_data_ptr<double>();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < m; ++i) {
    Dp[i * m + i] = 0.0;
    for (int64_t j = i + 1; j < m; ++j) {
      const double v = fp[i] && fp[j] ? std::max(0.0, S[i * m + i] + S[j * m + j] - 2.0 * S[i * m + j]) : kInf;
      Dp[i * m + j] = v;
      Dp[j * m + i] = v;
    }
  }
  return {D, finite};
}

at::Tensor mix_rows_cpu(const at::Tensor& C_in, const at::Tensor& X_in, const std::optional<at::Tensor>& center) {
  const Rows rows = rows_of(X_in, center, "mix_rows");
  check_coefficients(C_in, rows.X, center.has_value(), "mix_rows");
  const at::Tensor C = C_in.contiguous();
  const int64_t d = rows.X.size(1);
  const int64_t k = C.size(0);
  const int64_t m = C.size(1);
  const at::ScalarType dtype = rows.X.scalar_type();
  const bool direct = dtype == at::kFloat || dtype == at::kDouble;
  at::Tensor out = at::empty({k, d}, rows.X.options().dtype(dtype == at::kFloat ? at::kFloat : at::kDouble));
  if (k > 0 && d > 0) {
    // The non-zero coefficients, row by row: rows with coefficient 0 are never read.
    const double* c = C.const_data_ptr<double>();
    std::vector<int64_t> begin{0};
    std::vector<int64_t> index;
    std::vector<double> value;
    std::vector<int64_t> uses(static_cast<size_t>(m), 0);
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t i = 0; i < m; ++i) {
        if (c[r * m + i] == 0.0) continue;
        index.push_back(i);
        value.push_back(c[r * m + i]);
        ++uses[i];
      }
      begin.push_back(static_cast<int64_t>(index.size()));
    }
    const MixTarget target{begin.data(), index.data(), value.data(), uses.data(), k, out.mutable_data_ptr(), d};
    const Kernels kern = kernels();
    at::parallel_for(0, d, kMixColumnsPerTask, [&](int64_t col_begin, int64_t col_end) {
      Scratch scratch(m * kMixChunk);
      RowSource s = rows.source;
      s.col_begin = col_begin;
      s.col_end = col_end;
      s.scratch = scratch.data();
      s.chunk = kMixChunk;
      kern.mix(s, target);
    });
  }
  return direct ? out : out.to(dtype);
}

// (sums, n) float64 per-row sums over the columns: kernel(s, partial) adds
// each column block's `sums` values per row (partial[t * n + i]), and the
// blocks are added in block order.
template <typename Kernel>
at::Tensor row_sums(const Rows& rows, int64_t sums, Kernel kernel) {
  const int64_t n = rows.source.n;
  const int64_t d = rows.X.size(1);
  const Blocks blocks = column_blocks(d, sums * n);
  at::Tensor partial = at::zeros({std::max<int64_t>(blocks.count, 1), sums * n}, rows.X.options().dtype(at::kDouble));
  double* partial_ptr = partial.mutable_data_ptr<double>();
  at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      RowSource s = rows.source;
      s.col_begin = b * blocks.size;
      s.col_end = std::min(d, s.col_begin + blocks.size);
      kernel(s, partial_ptr + b * sums * n);
    }
  });
  at::Tensor out = at::zeros({sums, n}, rows.X.options().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  for (int64_t b = 0; b < blocks.count; ++b)
    for (int64_t t = 0; t < sums * n; ++t) o[t] += partial_ptr[b * sums * n + t];
  return out;
}

at::Tensor row_sq_norms_cpu(const at::Tensor& X_in) {
  const Rows rows = rows_of(X_in, std::nullopt, "row_sq_norms");
  const Kernels k = kernels();
  return row_sums(rows, 1, [&](const RowSource& s, double* partial) { k.norms(s, partial); })[0];
}

at::Tensor row_sq_norms_and_dots_cpu(const at::Tensor& X_in, const at::Tensor& v) {
  const Rows rows = rows_of(X_in, v, "row_sq_norms_and_dots", "v");
  const int64_t n = rows.source.n;
  const Kernels k = kernels();
  return row_sums(rows, 2, [&](const RowSource& s, double* partial) { k.norms_dots(s, partial, partial + n); });
}

at::Tensor row_sq_distances_cpu(const at::Tensor& X_in, const at::Tensor& v) {
  const Rows rows = rows_of(X_in, v, "row_sq_distances", "v");
  const Kernels k = kernels();
  return row_sums(rows, 1, [&](const RowSource& s, double* partial) { k.sq_distances(s, partial); })[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("pairwise_sq_distances", &pairwise_sq_distances_cpu);
  m.impl("mix_rows", &mix_rows_cpu);
  m.impl("row_sq_norms", &row_sq_norms_cpu);
  m.impl("row_sq_norms_and_dots", &row_sq_norms_and_dots_cpu);
  m.impl("row_sq_distances", &row_sq_distances_cpu);
}

}  // namespace robustagg::cpu
