// The fused multi-tensor updates (SPEC 6) written once for both devices. Each
// op checks its arguments, turns the optional lists that are present into
// template flags, rounds its scalars to at::opmath_type<T> and hands the
// device's kernels (cpu/fused_update.cpp, cuda/fused_update.cu) a functor of
// one element. Device provides, as static members:
//   run<K>(lists, writes, make): for the K lists, the first `writes` of them
//     written, calls make(T{}) for the element type T of the tensors and
//     applies the functor it returns, op(p, i), to every element i of every
//     tensor, where p[k] points at the tensor's elements in list k (null for
//     an absent list);
//   masked_sgd_step<kDecay, kKind>(params, momentum, grads, masks, lr, mu, wd);
//   weighted_step<kCorrected>(lists, weights, lr, beta).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <optional>

#include "fused_arithmetic.h"
#include "fused_checks.h"
#include "fused_dispatch.h"

namespace robustagg {

// The functors of the element-wise ops; p: the lists' pointers, in the order of the op's lists.
template <typename T>
struct MomentumOp {
  at::opmath_type<T> keep, take;
  C10_HOST_DEVICE C10_ALWAYS_INLINE void operator()(T* const* p, int64_t i) const {
    p[0][i] = momentum_value(p[0][i], p[1][i], keep, take);
  }
};

template <typename T, bool A, bool C, bool M>
struct ClientStepOp {
  ClientCoefs<at::opmath_type<T>> k;
  C10_HOST_DEVICE C10_ALWAYS_INLINE void operator()(T* const* p, int64_t i) const {
    p[0][i] =
        client_step_value<A, C, M>(p[0][i], p[1][i], A ? p[2][i] : T(0), C ? p[3][i] : T(0), M ? p[4][i] : T(0), k);
  }
};

template <typename T, bool A, bool C>
struct AdamClientStepOp {
  AdamCoefs<at::opmath_type<T>> k;
  C10_HOST_DEVICE C10_ALWAYS_INLINE void operator()(T* const* p, int64_t i) const {
    p[0][i] = adam_client_value<A, C>(p[0][i], p[1][i], A ? p[2][i] : T(0), C ? p[3][i] : T(0), p[4][i], p[5][i], k);
  }
};

template <typename T>
struct AdamStatsOp {
  at::opmath_type<T> b1, t1, b2, t2;
  C10_HOST_DEVICE C10_ALWAYS_INLINE void operator()(T* const* p, int64_t i) const {
    adam_stats_value(p[0][i], p[1][i], p[2][i], b1, t1, b2, t2);
  }
};

template <typename T>
struct MvrOp {
  at::opmath_type<T> take, keep;
  C10_HOST_DEVICE C10_ALWAYS_INLINE void operator()(T* const* p, int64_t i) const {
    p[0][i] = mvr_value(p[0][i], p[1][i], p[2][i], take, keep);
  }
};

template <typename Device>
void momentum_update(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  Device::template run<2>({buffers, grads}, 1, [&](auto tag) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    return MomentumOp<T>{static_cast<Acc>(beta), static_cast<Acc>(1.0 - beta)};
  });
}

template <typename Device>
void client_step(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                 std::optional<at::TensorList> control, std::optional<at::TensorList> momentum, double lr,
                 double coef_grad, double coef_anchor, double coef_control, double coef_momentum) {
  check_client_step(params, grads, anchor_grads, control, momentum, lr, coef_grad, coef_anchor, coef_control,
                    coef_momentum);
  with_flags(
      [&](auto A, auto C, auto M) {
        Device::template run<5>({params, grads, anchor_grads, control, momentum}, 1, [&](auto tag) {
          using T = decltype(tag);
          using Acc = at::opmath_type<T>;
          return ClientStepOp<T, decltype(A)::value, decltype(C)::value, decltype(M)::value>{
              {static_cast<Acc>(lr), static_cast<Acc>(coef_grad), static_cast<Acc>(coef_anchor),
               static_cast<Acc>(coef_control), static_cast<Acc>(coef_momentum)}};
        });
      },
      anchor_grads.has_value(), control.has_value(), momentum.has_value());
}

template <typename Device>
void adam_client_step(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                      std::optional<at::TensorList> control, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                      double lr, double beta1, double beta2, double eps, int64_t step) {
  check_adam_client_step(params, grads, anchor_grads, control, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step);
  const AdamScalars s = adam_scalars(lr, beta1, beta2, eps, step);
  with_flags(
      [&](auto A, auto C) {
        Device::template run<6>({params, grads, anchor_grads, control, exp_avg, exp_avg_sq}, 1, [&](auto tag) {
          using T = decltype(tag);
          return AdamClientStepOp<T, decltype(A)::value, decltype(C)::value>{s.as<at::opmath_type<T>>()};
        });
      },
      anchor_grads.has_value(), control.has_value());
}

template <typename Device>
void adam_stats_update(at::TensorList exp_avg, at::TensorList exp_avg_sq, at::TensorList grads, double beta1,
                       double beta2) {
  check_adam_stats_update(exp_avg, exp_avg_sq, grads, beta1, beta2);
  Device::template run<3>({exp_avg, exp_avg_sq, grads}, 2, [&](auto tag) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    return AdamStatsOp<T>{static_cast<Acc>(beta1), static_cast<Acc>(1.0 - beta1), static_cast<Acc>(beta2),
                          static_cast<Acc>(1.0 - beta2)};
  });
}

template <typename Device>
void mvr_update(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  check_mvr_update(momentum, grads, prev_grads, a);
  Device::template run<3>({momentum, grads, prev_grads}, 1, [&](auto tag) {
    using T = decltype(tag);
    using Acc = at::opmath_type<T>;
    return MvrOp<T>{static_cast<Acc>(a), static_cast<Acc>(1.0 - a)};
  });
}

template <typename Device>
void weighted_step(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> corrections,
                   at::ArrayRef<double> weights, double lr, double beta) {
  check_weighted_step(params, grads, corrections, weights, lr, beta);
  const int64_t collaborators = static_cast<int64_t>(weights.size()) - 1;
  const WeightedLists work = weighted_step_lists(params, grads, corrections, collaborators);
  with_flags(
      [&](auto corrected) { Device::template weighted_step<decltype(corrected)::value>(work, weights, lr, beta); },
      corrections.has_value());
}

template <typename Device>
void masked_sgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                     std::optional<at::TensorList> masks, double lr, double mu, double weight_decay) {
  const MaskKind kind = check_masked_sgd_step(params, grads, momentum, masks, lr, mu, weight_decay);
  with_mask_kind(kind, weight_decay != 0.0, [&](auto decay, auto kind_tag) {
    Device::template masked_sgd_step<decltype(decay)::value, decltype(kind_tag)::value>(params, momentum, grads, masks,
                                                                                        lr, mu, weight_decay);
  });
}

}  // namespace robustagg
