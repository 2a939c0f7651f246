// Interface between the CPU glue (coordinate.cpp, built for the baseline
// instruction set) and the column kernels, compiled once per instruction set.
// Plain C++ only: the kernel files must not instantiate library functions,
// whose copies the linker could share with code built for another ISA.
#pragma once

#include <cstdint>

#include "column_rule.h"
#include "kernel_constants.h"

namespace robustagg::cpu {

enum class InputKind : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// One task: a rule applied to columns [col_begin, col_end) of X.
struct ColumnArgs {
  const void* x;  // row-major (n, d) with unit column stride
  int64_t n;
  int64_t row_stride;  // elements between rows
  int64_t col_begin;
  int64_t col_end;
  InputKind kind;
  void* out;  // float* for kF32 input, double* otherwise
  ColumnRule rule;
  int64_t f;                   // trimmed_mean / meamed
  const int32_t* comparators;  // selection rules with n > kCpuMaxFixedRows: pairs (lo, hi)
  int64_t n_comparators;
  const double* weights;  // mean: n weights or nullptr (uniform)
  double weight_sum;      // mean: the divisor
  int64_t chunk_blocks;   // selection rules: column blocks staged at once
  void* scratch;          // selection rules: chunk_blocks * n * kLaneBytes bytes, aligned to kLaneBytes
};

// Bytes of one SIMD block of keys, at most (64 for AVX-512; 32 for AVX2 and 16
// for baseline code, which use the same scratch sizes).
constexpr int64_t kLaneBytes = 64;
// Bytes of keys the selection rules stage per chunk of columns (L2-resident).
constexpr int64_t kStageBytes = 64 * 1024;

void column_kernel_baseline(const ColumnArgs& args);
void column_kernel_avx2(const ColumnArgs& args);
void column_kernel_avx512(const ColumnArgs& args);

}  // namespace robustagg::cpu
