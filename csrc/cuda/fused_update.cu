// CUDA kernels of the fused multi-tensor updates (SPEC 6); the CPU versions
// and the arithmetic contract are in cpu/fused_update.cpp. One launch covers
// up to ChunkList::kMaxBlocks chunks of many tensors (multi_tensor.cuh).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "cuda/multi_tensor.cuh"
#include "fused_update.h"

namespace robustagg::cuda {
namespace {

constexpr int kThreads = 256;

// buffers <- keep * buffers + take * grads (momentum_value; --fmad=false keeps the roundings).
template <typename T>
__global__ void momentum_update_kernel(ChunkList<2> list, at::opmath_type<T> keep, at::opmath_type<T> take) {
  int tensor;
  int64_t begin, end;
  chunk_range(list, blockIdx.x, &tensor, &begin, &end);
  T* m = static_cast<T*>(list.ptr[0][tensor]);
  const T* g = static_cast<const T*>(list.ptr[1][tensor]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) m[i] = momentum_value(m[i], g[i], keep, take);
}

void momentum_update_cuda(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  if (buffers.empty()) return;
  const c10::cuda::CUDAGuard guard(buffers[0].device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // One multi-tensor launch sequence per dtype; strided buffers are updated
  // in a contiguous copy that is written back.
  std::vector<at::Tensor> work(buffers.size());
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    std::vector<std::array<at::Tensor, 2>> group;
    for (size_t i = 0; i < buffers.size(); ++i) {
      if (buffers[i].scalar_type() != dtype) continue;
      work[i] = buffers[i].contiguous();
      group.push_back({work[i], grads[i].contiguous()});
    }
    if (group.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "momentum_update_", [&] {
      using Acc = at::opmath_type<scalar_t>;
      const Acc keep = static_cast<Acc>(beta);
      const Acc take = static_cast<Acc>(1.0 - beta);
      for_each_chunk_list<2>(group, [&](const ChunkList<2>& list, int blocks) {
        momentum_update_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(list, keep, take);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (!work[i].is_same(buffers[i])) buffers[i].copy_(work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) { m.impl("momentum_update_", &momentum_update_cuda); }

}  // namespace robustagg::cuda
