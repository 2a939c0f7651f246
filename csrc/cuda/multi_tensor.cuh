// Multi-tensor launches: many tensors updated by one kernel launch, as in
// PyTorch's fused optimizers. The host cuts every tensor into chunks of
// kFusedCudaChunk elements and packs up to kMaxBlocks chunks of up to
// kMaxTensors tensors (kernel_constants.h) into a ChunkList passed by value
// as the kernel argument; block b processes chunk chunk_of_block[b] of tensor
// tensor_of_block[b]. Each of the Depth lists (e.g. buffers, grads) supplies
// one pointer per tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kernel_constants.h"

namespace robustagg::cuda {

template <int Depth>
struct ChunkList {
  static constexpr int kMaxTensors = kFusedCudaMaxTensors;
  static constexpr int kMaxBlocks = kFusedCudaMaxBlocks;
  void* ptr[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int16_t tensor_of_block[kMaxBlocks];
  int32_t chunk_of_block[kMaxBlocks];
};

// The elements [begin, end) of chunk list.chunk_of_block[block] in its tensor.
template <int Depth>
__device__ __forceinline__ void chunk_range(const ChunkList<Depth>& list, int block, int* tensor, int64_t* begin,
                                            int64_t* end) {
  *tensor = list.tensor_of_block[block];
  *begin = static_cast<int64_t>(list.chunk_of_block[block]) * kFusedCudaChunk;
  *end = min(list.numel[*tensor], *begin + kFusedCudaChunk);
}

// Calls launch(list, blocks) once per full ChunkList; a tensor whose chunks
// do not fit one launch continues in slot 0 of the next. All tensors must be
// contiguous and on one device; tensors[t][k] is tensor t of list k, or an
// undefined tensor (a null pointer) for an absent list; tensors[t] may hold
// more lists than the Depth passed.
template <int Depth, typename Groups, typename Launch>
void for_each_chunk_list(const Groups& tensors, Launch launch) {
  static_assert(sizeof(ChunkList<Depth>) <= 4096, "kernel arguments are limited to 4 KiB");
  ChunkList<Depth> list;
  int slot = 0;
  int blocks = 0;
  for (const auto& group : tensors) {
    const int64_t numel = group[0].numel();
    if (numel == 0) continue;
    for (int k = 0; k < Depth; ++k) list.ptr[k][slot] = group[k].defined() ? group[k].data_ptr() : nullptr;
    list.numel[slot] = numel;
    const int64_t chunks = (numel + kFusedCudaChunk - 1) / kFusedCudaChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      list.tensor_of_block[blocks] = static_cast<int16_t>(slot);
      list.chunk_of_block[blocks] = static_cast<int32_t>(c);
      ++blocks;
      const bool last_chunk = c + 1 == chunks;
      if (blocks == ChunkList<Depth>::kMaxBlocks || (last_chunk && slot + 1 == ChunkList<Depth>::kMaxTensors)) {
        launch(list, blocks);
        blocks = 0;
        if (last_chunk) {
          slot = -1;
        } else {
          for (int k = 0; k < Depth; ++k) list.ptr[k][0] = list.ptr[k][slot];
          list.numel[0] = list.numel[slot];
          slot = 0;
        }
      }
    }
    ++slot;
  }
  if (blocks > 0) launch(list, blocks);
}

}  // namespace robustagg::cuda
