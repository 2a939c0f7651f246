// CUDA kernels of the fused multi-tensor updates (SPEC 6); the element
// arithmetic is shared with the CPU kernels (fused_update.h). One launch
// covers up to ChunkList::kMaxBlocks chunks of many tensors (multi_tensor.cuh).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "cuda/multi_tensor.cuh"
#include "fused_update.h"

namespace robustagg::cuda {
namespace {

constexpr int kThreads = 256;

// Calls launch(dtype tag, group) for the tensors of each dtype: group[t][k]
// is tensor t of list k, contiguous (undefined for an absent list). The first
// `writes` lists are written: a strided tensor is updated in a contiguous
// copy that is written back. Lists after the first may have other dtypes
// (masks); the groups follow lists[0]'s dtype.
template <typename Launch>
void for_each_dtype_group(const std::vector<std::optional<at::TensorList>>& lists, size_t writes,
                          const Launch& launch) {
  const size_t depth = lists.size();
  const size_t count = lists[0]->size();
  if (count == 0) return;
  const c10::cuda::CUDAGuard guard((*lists[0])[0].device());
  std::vector<std::vector<at::Tensor>> work(count, std::vector<at::Tensor>(depth));
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    std::vector<std::vector<at::Tensor>> group;
    for (size_t i = 0; i < count; ++i) {
      if ((*lists[0])[i].scalar_type() != dtype) continue;
      for (size_t k = 0; k < depth; ++k) {
        if (lists[k].has_value()) work[i][k] = (*lists[k])[i].contiguous();
      }
      group.push_back(work[i]);
    }
    if (group.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_update", [&] {
      launch(scalar_t{}, group);
    });
  }
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < writes; ++k) {
      if (!work[i][k].is_same((*lists[k])[i])) (*lists[k])[i].copy_(work[i][k]);
    }
  }
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

// The chunk this block updates: tensor t's elements [begin, end).
#define ROBUSTAGG_CHUNK(K)           \
  int t;                             \
  int64_t begin, end;                \
  chunk_range(list, blockIdx.x, &t, &begin, &end)

template <typename T>
__device__ __forceinline__ T* list_ptr(const void* p) {
  return static_cast<T*>(const_cast<void*>(p));
}

template <typename T>
__global__ void momentum_update_kernel(ChunkList<2> list, at::opmath_type<T> keep, at::opmath_type<T> take) {
  ROBUSTAGG_CHUNK(2);
  T* m = list_ptr<T>(list.ptr[0][t]);
  const T* g = list_ptr<T>(list.ptr[1][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) m[i] = momentum_value(m[i], g[i], keep, take);
}

template <typename T, bool A, bool C, bool M>
__global__ void client_step_kernel(ChunkList<5> list, ClientCoefs<at::opmath_type<T>> k) {
  ROBUSTAGG_CHUNK(5);
  T* p = list_ptr<T>(list.ptr[0][t]);
  const T* g = list_ptr<T>(list.ptr[1][t]);
  const T* a = list_ptr<T>(list.ptr[2][t]);
  const T* c = list_ptr<T>(list.ptr[3][t]);
  const T* m = list_ptr<T>(list.ptr[4][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    p[i] = client_step_value<A, C, M>(p[i], g[i], A ? a[i] : T(0), C ? c[i] : T(0), M ? m[i] : T(0), k);
  }
}

template <typename T, bool A, bool C>
__global__ void adam_client_step_kernel(ChunkList<6> list, AdamCoefs<at::opmath_type<T>> k) {
  ROBUSTAGG_CHUNK(6);
  T* p = list_ptr<T>(list.ptr[0][t]);
  const T* g = list_ptr<T>(list.ptr[1][t]);
  const T* a = list_ptr<T>(list.ptr[2][t]);
  const T* c = list_ptr<T>(list.ptr[3][t]);
  const T* m = list_ptr<T>(list.ptr[4][t]);
  const T* v = list_ptr<T>(list.ptr[5][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    p[i] = adam_client_value<A, C>(p[i], g[i], A ? a[i] : T(0), C ? c[i] : T(0), m[i], v[i], k);
  }
}

template <typename T, typename Acc = at::opmath_type<T>>
__global__ void adam_stats_update_kernel(ChunkList<3> list, Acc b1, Acc t1, Acc b2, Acc t2) {
  ROBUSTAGG_CHUNK(3);
  T* m = list_ptr<T>(list.ptr[0][t]);
  T* v = list_ptr<T>(list.ptr[1][t]);
  const T* g = list_ptr<T>(list.ptr[2][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) adam_stats_value(m[i], v[i], g[i], b1, t1, b2, t2);
}

template <typename T, typename Acc = at::opmath_type<T>>
__global__ void mvr_update_kernel(ChunkList<3> list, Acc take, Acc keep) {
  ROBUSTAGG_CHUNK(3);
  T* m = list_ptr<T>(list.ptr[0][t]);
  const T* g = list_ptr<T>(list.ptr[1][t]);
  const T* h = list_ptr<T>(list.ptr[2][t]);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) m[i] = mvr_value(m[i], g[i], h[i], take, keep);
}

// masked_sgd_step_: lists params, momentum, grads, masks (bytes; null when absent).
template <typename T, bool WD, MaskKind Kind, typename Acc = at::opmath_type<T>>
__global__ void masked_sgd_step_kernel(ChunkList<4> list, Acc lr, Acc mu, Acc wd) {
  ROBUSTAGG_CHUNK(4);
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

#undef ROBUSTAGG_CHUNK

// weighted_step_ reads 2N + 2 lists, too many for a ChunkList argument, so
// its launch gets a table in device memory instead:
//   [tensors x lists] addresses | [tensors] numel | [chunks x 2] (tensor, first element) | N + 1 weights (double bits).
// Lists: params, the N corrections when present, the N + 1 users' grads.
constexpr int64_t kTableChunk = 8192;

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
  const int64_t end = min(numel[tensor], begin + kTableChunk);
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

void momentum_update_cuda(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  for_each_dtype_group({buffers, grads}, 1, [&](auto tag, const auto& group) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    launch_chunks<2>(group, momentum_update_kernel<T>, static_cast<Acc>(beta), static_cast<Acc>(1.0 - beta));
  });
}

void client_step_cuda(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                      std::optional<at::TensorList> control, std::optional<at::TensorList> momentum, double lr,
                      double coef_grad, double coef_anchor, double coef_control, double coef_momentum) {
  check_client_step(params, grads, anchor_grads, control, momentum, lr, coef_grad, coef_anchor, coef_control,
                    coef_momentum);
  with_flags(
      [&](auto A, auto C, auto M) {
        for_each_dtype_group({params, grads, anchor_grads, control, momentum}, 1, [&](auto tag, const auto& group) {
          using T = decltype(tag);
          using Acc = at::opmath_type<T>;
          const ClientCoefs<Acc> k{static_cast<Acc>(lr), static_cast<Acc>(coef_grad), static_cast<Acc>(coef_anchor),
                                   static_cast<Acc>(coef_control), static_cast<Acc>(coef_momentum)};
          launch_chunks<5>(group, client_step_kernel<T, decltype(A)::value, decltype(C)::value, decltype(M)::value>, k);
        });
      },
      anchor_grads.has_value(), control.has_value(), momentum.has_value());
}

void adam_client_step_cuda(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                           std::optional<at::TensorList> control, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                           double lr, double beta1, double beta2, double eps, int64_t step) {
  check_adam_client_step(params, grads, anchor_grads, control, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step);
  const AdamScalars s = adam_scalars(lr, beta1, beta2, eps, step);
  with_flags(
      [&](auto A, auto C) {
        for_each_dtype_group({params, grads, anchor_grads, control, exp_avg, exp_avg_sq}, 1,
                                [&](auto tag, const auto& group) {
                                  using T = decltype(tag);
                                  launch_chunks<6>(group, adam_client_step_kernel<T, decltype(A)::value, decltype(C)::value>,
                                                   s.as<at::opmath_type<T>>());
                                });
      },
      anchor_grads.has_value(), control.has_value());
}

void adam_stats_update_cuda(at::TensorList exp_avg, at::TensorList exp_avg_sq, at::TensorList grads, double beta1,
                            double beta2) {
  check_adam_stats_update(exp_avg, exp_avg_sq, grads, beta1, beta2);
  for_each_dtype_group({exp_avg, exp_avg_sq, grads}, 2, [&](auto tag, const auto& group) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    launch_chunks<3>(group, adam_stats_update_kernel<T>, static_cast<Acc>(beta1), static_cast<Acc>(1.0 - beta1),
                     static_cast<Acc>(beta2), static_cast<Acc>(1.0 - beta2));
  });
}

void mvr_update_cuda(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  check_mvr_update(momentum, grads, prev_grads, a);
  for_each_dtype_group({momentum, grads, prev_grads}, 1, [&](auto tag, const auto& group) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    launch_chunks<3>(group, mvr_update_kernel<T>, static_cast<Acc>(a), static_cast<Acc>(1.0 - a));
  });
}

void masked_sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                          std::optional<at::TensorList> masks, double lr, double mu, double weight_decay) {
  const MaskKind kind = check_masked_sgd_step(params, grads, momentum, masks, lr, mu, weight_decay);
  with_mask_kind(kind, weight_decay != 0.0, [&](auto wd_flag, auto kind_tag) {
    for_each_dtype_group({params, momentum, grads, masks}, 2, [&](auto tag, const auto& group) {
      using T = decltype(tag);
      using Acc = at::opmath_type<T>;
      launch_chunks<4>(group, masked_sgd_step_kernel<T, decltype(wd_flag)::value, decltype(kind_tag)::value>,
                       static_cast<Acc>(lr), static_cast<Acc>(mu), static_cast<Acc>(weight_decay));
    });
  });
}

void weighted_step_cuda(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> corrections,
                        at::ArrayRef<double> weights, double lr, double beta) {
  check_weighted_step(params, grads, corrections, weights, lr, beta);
  const int collaborators = static_cast<int>(weights.size()) - 1;
  const WeightedLists work = weighted_step_lists(params, grads, corrections, collaborators);
  with_flags(
      [&](auto corrected) {
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
            for (int64_t b = 0; b < numel; b += kTableChunk) chunks.insert(chunks.end(), {t, b});
          }
          const int64_t blocks = static_cast<int64_t>(chunks.size()) / 2;
          if (blocks == 0) return;
          host.insert(host.end(), chunks.begin(), chunks.end());
          for (const double w : weights) host.push_back(c10::bit_cast<int64_t>(w));
          // Pinned, so that the upload does not wait for the stream's earlier work.
          at::Tensor pinned = at::empty({static_cast<int64_t>(host.size())},
                                        at::TensorOptions().dtype(at::kLong).pinned_memory(true));
          std::copy(host.begin(), host.end(), pinned.data_ptr<int64_t>());
          const at::Tensor table = pinned.to(group[0][0].device(), /*non_blocking=*/true);
          const WeightedTable view{table.data_ptr<int64_t>(), tensors, depth, blocks, collaborators};
          const size_t shared = depth * sizeof(int64_t) + (collaborators + 1) * sizeof(Acc);
          const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
          TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "weighted_step_: too many chunks");
          weighted_step_kernel<T, decltype(corrected)::value><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
              view, static_cast<Acc>(lr), static_cast<Acc>(1.0 - beta), static_cast<Acc>(beta));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      },
      corrections.has_value());
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("momentum_update_", &momentum_update_cuda);
  m.impl("client_step_", &client_step_cuda);
  m.impl("adam_client_step_", &adam_client_step_cuda);
  m.impl("adam_stats_update_", &adam_stats_update_cuda);
  m.impl("mvr_update_", &mvr_update_cuda);
  m.impl("weighted_step_", &weighted_step_cuda);
  m.impl("masked_sgd_step_", &masked_sgd_step_cuda);
}

}  // namespace robustagg::cuda
