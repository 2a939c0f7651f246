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
#include <torch/library.h>

#include <array>
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
// copy that is written back.
template <size_t K, typename Launch>
void for_each_dtype_group(const std::array<std::optional<at::TensorList>, K>& lists, size_t writes,
                          const Launch& launch) {
  const size_t count = lists[0]->size();
  if (count == 0) return;
  const c10::cuda::CUDAGuard guard((*lists[0])[0].device());
  std::vector<std::array<at::Tensor, K>> work(count);
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    std::vector<std::array<at::Tensor, K>> group;
    for (size_t i = 0; i < count; ++i) {
      if ((*lists[0])[i].scalar_type() != dtype) continue;
      for (size_t k = 0; k < K; ++k) {
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

#undef ROBUSTAGG_CHUNK

void momentum_update_cuda(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  for_each_dtype_group<2>({buffers, grads}, 1, [&](auto tag, const auto& group) {
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
        for_each_dtype_group<5>({params, grads, anchor_grads, control, momentum}, 1, [&](auto tag, const auto& group) {
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
        for_each_dtype_group<6>({params, grads, anchor_grads, control, exp_avg, exp_avg_sq}, 1,
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
  for_each_dtype_group<3>({exp_avg, exp_avg_sq, grads}, 2, [&](auto tag, const auto& group) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    launch_chunks<3>(group, adam_stats_update_kernel<T>, static_cast<Acc>(beta1), static_cast<Acc>(1.0 - beta1),
                     static_cast<Acc>(beta2), static_cast<Acc>(1.0 - beta2));
  });
}

void mvr_update_cuda(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  check_mvr_update(momentum, grads, prev_grads, a);
  for_each_dtype_group<3>({momentum, grads, prev_grads}, 1, [&](auto tag, const auto& group) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    launch_chunks<3>(group, mvr_update_kernel<T>, static_cast<Acc>(a), static_cast<Acc>(1.0 - a));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("momentum_update_", &momentum_update_cuda);
  m.impl("client_step_", &client_step_cuda);
  m.impl("adam_client_step_", &adam_client_step_cuda);
  m.impl("adam_stats_update_", &adam_stats_update_cuda);
  m.impl("mvr_update_", &mvr_update_cuda);
}

}  // namespace robustagg::cuda
