// Interface between the CPU glue (coordinate.cpp, built for the baseline
// instruction set) and the selection kernel, compiled once per instruction set.
// Plain C++ only: the kernel files must not instantiate library templates,
// whose copies the linker could share with code built for another ISA.
#pragma once

#include <cstdint>

namespace robustagg::cpu {

enum class InputKind : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

struct SelectArgs {
  const void* x;        // row-major (n, d) with unit column stride
  int64_t n;
  int64_t row_stride;   // elements between rows
  int64_t col_begin;    // columns [col_begin, col_end) are processed
  int64_t col_end;
  InputKind kind;
  void* out;            // float* for kF32 input, double* otherwise
  int mode;             // robustagg::SelectMode
  int64_t f;
  const int32_t* comparators;  // pairs (lo, hi), lo < hi
  int64_t n_comparators;
  void* scratch;        // n * kSelectLaneBytes bytes, aligned to kSelectLaneBytes
};

// One SIMD block of columns: 16 float keys or 8 double keys.
constexpr int64_t kSelectLaneBytes = 64;

void select_columns_baseline(const SelectArgs& args);
void select_columns_avx2(const SelectArgs& args);
void select_columns_avx512(const SelectArgs& args);

}  // namespace robustagg::cpu
