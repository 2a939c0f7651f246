// Interface between the CPU glue of the distance ops (distance.cpp, built for
// the baseline instruction set) and their kernels, compiled once per
// instruction set (distance_isa_*.cpp). Plain C++ only, as in coordinate_kernel.h.
#pragma once

#include <cstdint>

#include "cpu/coordinate_kernel.h"

namespace robustagg::cpu {

// Rows of X (and an optional extra row, `center`) in a column range.
struct RowSource {
  const void* x;  // row-major (n, d) with unit column stride
  int64_t n;
  int64_t row_stride;  // elements between rows
  const void* center;  // contiguous (d,) of the same kind, or nullptr
  InputKind kind;
  int64_t col_begin;
  int64_t col_end;
  double* scratch;  // staging buffer, aligned to kLaneBytes
  int64_t chunk;    // columns staged at once, a multiple of kStageColumns
};

// Gram matrix of the shifted points p_i = x_i - r over the column range,
// where r is the per-column median of rows 0, (n-1)/2, n-1 (non-finite values
// read as 0). Adds S_ij into gram[i * m + j] for i <= j (m = rows incl. center).
// scratch: (round_up(m, kTileRows) + 1) * chunk doubles.
void gram_kernel_baseline(const RowSource& src, double* gram);
void gram_kernel_avx2(const RowSource& src, double* gram);
void gram_kernel_avx512(const RowSource& src, double* gram);

// out[r][c] = sum over the non-zero coefficients of output row r (rows
// index[p], coefficients value[p], p in [begin[r], begin[r + 1]), in
// increasing row order) of coefficient * row[c], in float64, for the column
// range. Row i is read by uses[i] outputs (0: never read). out is float*
// (row stride out_stride) for kF32 input, double* otherwise. scratch:
// m * chunk doubles.
struct MixTarget {
  const int64_t* begin;  // k + 1 offsets into index / value
  const int64_t* index;
  const double* value;
  const int64_t* uses;  // m counts
  int64_t k;
  void* out;
  int64_t out_stride;
};
void mix_kernel_baseline(const RowSource& src, const MixTarget& target);
void mix_kernel_avx2(const RowSource& src, const MixTarget& target);
void mix_kernel_avx512(const RowSource& src, const MixTarget& target);

// norms[i] += sum_c x_ic^2 over the column range, for the n rows. No scratch.
void norms_kernel_baseline(const RowSource& src, double* norms);
void norms_kernel_avx2(const RowSource& src, double* norms);
void norms_kernel_avx512(const RowSource& src, double* norms);

// norms[i] += sum_c x_ic^2 and dots[i] += sum_c x_ic v_c over the column
// range, for the n rows, with v = src.center. No scratch.
void norms_dots_kernel_baseline(const RowSource& src, double* norms, double* dots);
void norms_dots_kernel_avx2(const RowSource& src, double* norms, double* dots);
void norms_dots_kernel_avx512(const RowSource& src, double* norms, double* dots);

// out[i] += sum_c (x_ic - v_c)^2 over the column range, for the n rows, with
// v = src.center. No scratch.
void sq_distances_kernel_baseline(const RowSource& src, double* out);
void sq_distances_kernel_avx2(const RowSource& src, double* out);
void sq_distances_kernel_avx512(const RowSource& src, double* out);

// Staged chunks are a multiple of this many columns (one AVX-512 block of
// 32-bit values), and the Gram's staged rows are padded to a multiple of kTileRows.
constexpr int64_t kStageColumns = 16;
constexpr int64_t kTileRows = 4;

}  // namespace robustagg::cpu
