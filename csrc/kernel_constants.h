// Sizes the kernels are built around, in one place for the CPU and CUDA
// kernels; robustagg._C exposes each as an integer attribute (robustagg.cpp)
// so that tests aim at the boundaries they cross. Plain C++: the per-ISA
// kernel files include it (see cpu/coordinate_kernel.h).
#pragma once

#include <cstdint>

namespace robustagg {

// ---------------------------------------------------------------------------
// Coordinate-wise rules.

// CPU: up to this many rows the sorting network is fixed at compile time and
// a column block stays in registers; above it a run-time comparator list is used.
constexpr int64_t kCpuMaxFixedRows = 64;
// CPU: columns per parallel task: large enough to amortise the task, small
// enough to balance the cores. A multiple of every lane count.
constexpr int64_t kCpuColumnsPerTask = 4096;
// CUDA: up to this many rows a column sits in one thread's registers (keys of
// float32 and the half types; float64 keys take two registers each, so
// float64 stops at half as many), above it in a shared-memory tile.
constexpr int kCudaMaxRegisterRows = 64;
constexpr int kCudaMaxRegisterRows64 = kCudaMaxRegisterRows / 2;
// CUDA: shared memory the tile kernel may use per block (opted in above 48 KB).
constexpr int64_t kCudaTileSmemBytes = 96 * 1024;

// CUDA: the most rows a tile holds for keys of key_bytes bytes. Rows are
// padded to a power of two, and one column of the largest tile fills the budget.
constexpr int64_t cuda_max_tile_rows(int64_t key_bytes) {
  int64_t p = 1;
  while (p < kCudaTileSmemBytes / key_bytes + 1) p *= 2;
  return p / 2;
}

// ---------------------------------------------------------------------------
// Fused multi-tensor updates.

// CPU: elements per parallel piece, so the result does not depend on the
// thread count. A multiple of 8, so that a packed mask's piece starts at a whole byte.
constexpr int64_t kFusedCpuPiece = int64_t{1} << 14;
// CPU: ops that loop over many lists at once (weighted_step_, masked_sgd_step_)
// work through a piece in blocks of this many elements.
constexpr int64_t kFusedCpuBlock = 256;
// CUDA multi-tensor launches: elements per block (one chunk of a tensor), and
// per launch at most kFusedCudaMaxBlocks chunks of at most kFusedCudaMaxTensors tensors.
constexpr int64_t kFusedCudaChunk = 65536;
constexpr int kFusedCudaMaxBlocks = 320;
constexpr int kFusedCudaMaxTensors = 36;
// CUDA weighted_step_: elements per block (its launches read a table in device memory).
constexpr int64_t kFusedCudaTableChunk = 8192;

static_assert(kFusedCpuPiece % 8 == 0 && kFusedCpuPiece % kFusedCpuBlock == 0 && kFusedCpuBlock % 8 == 0,
              "packed masks are read a whole byte at a time");

}  // namespace robustagg
