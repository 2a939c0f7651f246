// CUDA kernels of the fused multi-tensor updates (SPEC 6). The ops themselves
// are written once for both devices (fused_ops.h); this file visits their
// elements. One launch covers up to kFusedCudaMaxBlocks chunks of many
// tensors (multi_tensor.cuh).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/bit_cast.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "cuda/multi_tensor.cuh"
#include "fused_ops.h"
#include "kernel_constants.h"

namespace robustagg::cuda {
namespace {

constexpr int kThreads = 256;

// Calls launch(dtype tag, group) for the tensors of each dtype: group[t][k]
// is tensor t of list k, contiguous (undefined for an absent list). The first
// `writes` lists are written (fused_dispatch.h's write_back). Lists after
// the first may have other dtypes (masks); the groups follow lists[0]'s dtype.
template <typename Launch>
void for_each_dtype_group(const TensorLists& lists, size_t writes, const Launch& launch) {
  const size_t count = lists[0]->size();
  if (count == 0) return;
  const c10::cuda::CUDAGuard guard((*lists[0])[0].device());
  const std::vector<std::vector<at::Tensor>> work = contiguous_tensors(lists);
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    std::vector<std::vector<at::Tensor>> group;
    for (size_t i = 0; i < count; ++i) {
      if ((*lists[0])[i].scalar_type() == dtype) group.push_back(work[i]);
    }
    if (group.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_update",
                                    [&] { launch(scalar_t{}, group); });
  }
  write_back(lists, writes, work);
}

// Launches kernel<<<blocks, kThreads>>>(list, args...) over the groups' chunks.
template <int K, typename Group, typename Kernel, typename... Args>
void launch_chunks(const Group& group, Kernel kernel, Args... args) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for_each_chunk_list<K>(group, [&](const ChunkList<K>& list, int blocks) {
    kernel<<<blocks, kThreads, 0, stream>>>(list, args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename T>
__device__ __forceinline__ T* list_ptr(const void* p) {
  return static_cast<T*>(const_cast<void*>(p));
}

// op(p, i) for the elements of this block's chunk, p[k]: the tensor in list k.
template <typename T, int K, typename Op>
__global__ void elementwise_kernel(ChunkList<K> list, Op op) {
  int t;
  int64_t begin, end;
  chunk_range(list, blockIdx.x, &t, &begin, &end);
  T* p[K];
#pragma unroll
  for (int k = 0; k < K; ++k) p[k] = list_ptr<T>(list.ptr[k][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) op(p, i);
}

// masked_sgd_step_: lists params, momentum, grads, masks (bytes; null when absent).
template <typename T, bool WD, MaskKind Kind, typename Acc = at::opmath_type<T>>
__global__ void masked_sgd_step_kernel(ChunkList<4> list, Acc lr, Acc mu, Acc wd) {
  int t;
  int64_t begin, end;
  chunk_range(list, blockIdx.x, &t, &begin, &end);
  T* p = list_ptr<T>(list.ptr[0][t]);
  T* m = list_ptr<T>(list.ptr[1][t]);
  const T* g = list_ptr<T>(list.ptr[2][t]);
  const uint8_t* mask = list_ptr<const uint8_t>(list.ptr[3][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    if (!mask_bit<Kind>(mask, i)) continue;
    T p1, m1;
    sgd_momentum_value<WD>(p[i], m[i], g[i], lr, mu, wd, p1, m1);
    p[i] = p1;
    m[i] = m1;
  }
}

// weighted_step_ reads 2N + 2 lists, too many for a ChunkList argument, so
// its launch gets a table in device memory instead:
//   [tensors x lists] addresses | [tensors] numel | [chunks x 2] (tensor, first element) | N + 1 weights (double bits).
// Lists: params, the N corrections when present, the N + 1 users' grads.
struct WeightedTable {
  const int64_t* base;
  int64_t tensors, lists, chunks;
  int collaborators;
};

template <typename T, bool Corrected, typename Acc = at::opmath_type<T>>
__global__ void weighted_step_kernel(WeightedTable table, Acc lr, Acc keep, Acc take) {
  extern __shared__ int64_t shared[];
  const int users = table.collaborators + 1;
  const int64_t* numel = table.base + table.tensors * table.lists;
  const int64_t* chunk = numel + table.tensors + 2 * static_cast<int64_t>(blockIdx.x);
  const double* weights = reinterpret_cast<const double*>(numel + table.tensors + 2 * table.chunks);
  const int64_t tensor = chunk[0];
  const int64_t begin = chunk[1];
  const int64_t end = min(numel[tensor], begin + kFusedCudaTableChunk);
  // The block's addresses and weights, read once into shared memory.
  int64_t* address = shared;
  Acc* a = reinterpret_cast<Acc*>(shared + table.lists);
  for (int k = threadIdx.x; k < table.lists; k += blockDim.x) address[k] = table.base[tensor * table.lists + k];
  for (int k = threadIdx.x; k < users; k += blockDim.x) a[k] = static_cast<Acc>(weights[k]);
  __syncthreads();
  T* p = reinterpret_cast<T*>(address[0]);
  const int64_t* grad_address = address + (Corrected ? 1 + table.collaborators : 1);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const T g0 = reinterpret_cast<const T*>(grad_address[0])[i];
    Acc u = a[0] * static_cast<Acc>(g0);
    for (int k = 1; k < users; ++k) {
      const T gk = reinterpret_cast<const T*>(grad_address[k])[i];
      if constexpr (Corrected) {
        T* c = reinterpret_cast<T*>(address[k]);
        const T ck = c[i];
        u = collaborator_term(u, gk, a[k]) + static_cast<Acc>(ck);
        c[i] = correction_value(ck, g0, gk, a[k], keep, take);
      } else {
        u = collaborator_term(u, gk, a[k]);
      }
    }
    p[i] = descend(p[i], lr, u);
  }
}

// The CUDA side of fused_ops.h.
struct Cuda {
  template <int K, typename Make>
  static void run(const TensorLists& lists, size_t writes, const Make& make) {
    for_each_dtype_group(lists, writes, [&](auto tag, const auto& group) {
      const auto op = make(tag);
      launch_chunks<K>(group, elementwise_kernel<decltype(tag), K, decltype(op)>, op);
    });
  }

  template <bool kWD, MaskKind kKind>
  static void masked_sgd_step(at::TensorList params, at::TensorList momentum, at::TensorList grads,
                              const std::optional<at::TensorList>& masks, double lr, double mu, double weight_decay) {
    for_each_dtype_group({params, momentum, grads, masks}, 2, [&](auto tag, const auto& group) {
      using T = decltype(tag);
      using Acc = at::opmath_type<T>;
      launch_chunks<4>(group, masked_sgd_step_kernel<T, kWD, kKind>, static_cast<Acc>(lr), static_cast<Acc>(mu),
                       static_cast<Acc>(weight_decay));
    });
  }

  template <bool kCorrected>
  static void weighted_step(const WeightedLists& work, at::ArrayRef<double> weights, double lr, double beta) {
    const int collaborators = static_cast<int>(weights.size()) - 1;
    for_each_dtype_group(work.lists, work.writes, [&](auto tag, const auto& group) {
      using T = decltype(tag);
      using Acc = at::opmath_type<T>;
      const int64_t depth = static_cast<int64_t>(work.lists.size());
      const int64_t tensors = static_cast<int64_t>(group.size());
      std::vector<int64_t> host(tensors * depth + tensors);
      std::vector<int64_t> chunks;
      for (int64_t t = 0; t < tensors; ++t) {
        for (int64_t k = 0; k < depth; ++k) host[t * depth + k] = reinterpret_cast<int64_t>(group[t][k].data_ptr());
        const int64_t numel = group[t][0].numel();
        host[tensors * depth + t] = numel;
        for (int64_t b = 0; b < numel; b += kFusedCudaTableChunk) chunks.insert(chunks.end(), {t, b});
      }
      const int64_t blocks = static_cast<int64_t>(chunks.size()) / 2;
      if (blocks == 0) return;
      host.insert(host.end(), chunks.begin(), chunks.end());
      for (const double w : weights) host.push_back(c10::bit_cast<int64_t>(w));
      // Pinned, so that the upload does not wait for the stream's earlier work.
      at::Tensor pinned =
          at::empty({static_cast<int64_t>(host.size())}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      std::copy(host.begin(), host.end(), pinned.data_ptr<int64_t>());
      const at::Tensor table = pinned.to(group[0][0].device(), /*non_blocking=*/true);
      const WeightedTable view{table.data_ptr<int64_t>(), tensors, depth, blocks, collaborators};
      const size_t shared = depth * sizeof(int64_t) + (collaborators + 1) * sizeof(Acc);
      const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "weighted_step_: too many chunks");
      weighted_step_kernel<T, kCorrected><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
          view, static_cast<Acc>(lr), static_cast<Acc>(1.0 - beta), static_cast<Acc>(beta));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("momentum_update_", &momentum_update<Cuda>);
  m.impl("client_step_", &client_step<Cuda>);
  m.impl("adam_client_step_", &adam_client_step<Cuda>);
  m.impl("adam_stats_update_", &adam_stats_update<Cuda>);
  m.impl("mvr_update_", &mvr_update<Cuda>);
  m.impl("weighted_step_", &weighted_step<Cuda>);
  m.impl("masked_sgd_step_", &masked_sgd_step<Cuda>);
}

}  // namespace robustagg::cuda
