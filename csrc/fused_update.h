// What the CPU and CUDA kernels of the fused updates share: argument checks
// and the arithmetic of one element, so both devices give the same bits.
// Every update is computed in at::opmath_type<T> (float32 for float32 and
// the half types, float64 for float64), each operation rounded once: the
// builds forbid contracting a product and a sum into an FMA.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <optional>
#include <type_traits>

#include "common.h"

namespace robustagg {

// An optional list pairs with `params` when present.
inline void check_optional_pairs(at::TensorList params, const std::optional<at::TensorList>& other, const char* name,
                                 const char* rule) {
  if (other.has_value()) check_tensor_pairs(params, *other, "params", name, rule);
}

inline void check_unit(double value, const char* name, const char* rule) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0.0 && value <= 1.0,
                    message(rule, ": ", name, " must be in [0, 1], got ", name, "=", value));
}

inline void check_finite(double value, const char* name, const char* rule) {
  TORCH_CHECK_VALUE(std::isfinite(value), message(rule, ": ", name, " must be finite, got ", name, "=", value));
}

inline void check_momentum_update(at::TensorList buffers, at::TensorList grads, double beta) {
  constexpr const char* kRule = "momentum_update_";
  check_tensor_pairs(buffers, grads, "buffers", "grads", kRule);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0.0 && beta <= 1.0,
                    message(kRule, ": beta must be in [0, 1], got beta=", beta));
}

inline void check_client_step(at::TensorList params, at::TensorList grads,
                              const std::optional<at::TensorList>& anchor_grads,
                              const std::optional<at::TensorList>& control, const std::optional<at::TensorList>& momentum,
                              double lr, double coef_grad, double coef_anchor, double coef_control,
                              double coef_momentum) {
  constexpr const char* kRule = "client_step_";
  check_tensor_pairs(params, grads, "params", "grads", kRule);
  check_optional_pairs(params, anchor_grads, "anchor_grads", kRule);
  check_optional_pairs(params, control, "control", kRule);
  check_optional_pairs(params, momentum, "momentum", kRule);
  check_finite(lr, "lr", kRule);
  check_finite(coef_grad, "coef_grad", kRule);
  check_finite(coef_anchor, "coef_anchor", kRule);
  check_finite(coef_control, "coef_control", kRule);
  check_finite(coef_momentum, "coef_momentum", kRule);
}

inline void check_adam_client_step(at::TensorList params, at::TensorList grads,
                                   const std::optional<at::TensorList>& anchor_grads,
                                   const std::optional<at::TensorList>& control, at::TensorList exp_avg,
                                   at::TensorList exp_avg_sq, double lr, double beta1, double beta2, double eps,
                                   int64_t step) {
  constexpr const char* kRule = "adam_client_step_";
  check_tensor_pairs(params, grads, "params", "grads", kRule);
  check_optional_pairs(params, anchor_grads, "anchor_grads", kRule);
  check_optional_pairs(params, control, "control", kRule);
  check_tensor_pairs(params, exp_avg, "params", "exp_avg", kRule);
  check_tensor_pairs(params, exp_avg_sq, "params", "exp_avg_sq", kRule);
  check_finite(lr, "lr", kRule);
  TORCH_CHECK_VALUE(std::isfinite(beta1) && beta1 >= 0.0 && beta1 < 1.0,
                    message(kRule, ": beta1 must be in [0, 1), got beta1=", beta1));
  TORCH_CHECK_VALUE(std::isfinite(beta2) && beta2 >= 0.0 && beta2 < 1.0,
                    message(kRule, ": beta2 must be in [0, 1), got beta2=", beta2));
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0.0, message(kRule, ": eps must be finite and > 0, got eps=", eps));
  TORCH_CHECK_VALUE(step >= 1, message(kRule, ": step must be >= 1, got step=", step));
}

inline void check_adam_stats_update(at::TensorList exp_avg, at::TensorList exp_avg_sq, at::TensorList grads,
                                    double beta1, double beta2) {
  constexpr const char* kRule = "adam_stats_update_";
  check_tensor_pairs(exp_avg, exp_avg_sq, "exp_avg", "exp_avg_sq", kRule);
  check_tensor_pairs(exp_avg, grads, "exp_avg", "grads", kRule);
  check_unit(beta1, "beta1", kRule);
  check_unit(beta2, "beta2", kRule);
}

inline void check_mvr_update(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  constexpr const char* kRule = "mvr_update_";
  check_tensor_pairs(momentum, grads, "momentum", "grads", kRule);
  check_tensor_pairs(momentum, prev_grads, "momentum", "prev_grads", kRule);
  check_unit(a, "a", kRule);
}

// keep * m + take * g with keep = beta and take = 1 - beta (computed in
// double, then rounded to Acc).
template <typename T>
C10_HOST_DEVICE inline T momentum_value(T m, T g, at::opmath_type<T> keep, at::opmath_type<T> take) {
  using Acc = at::opmath_type<T>;
  return static_cast<T>(keep * static_cast<Acc>(m) + take * static_cast<Acc>(g));
}

// client_step_: p - lr * (((k_g g + k_a a) + k_c c) + k_m m); absent terms are skipped.
template <typename Acc>
struct ClientCoefs {
  Acc lr, grad, anchor, control, momentum;
};

// The present terms are template flags, so that the CPU loops have no
// branches and vectorise.
template <bool A, bool C, bool M, typename T>
C10_HOST_DEVICE inline T client_step_value(T p, T g, T a, T c, T m, const ClientCoefs<at::opmath_type<T>>& k) {
  using Acc = at::opmath_type<T>;
  Acc d = k.grad * static_cast<Acc>(g);
  if constexpr (A) d = d + k.anchor * static_cast<Acc>(a);
  if constexpr (C) d = d + k.control * static_cast<Acc>(c);
  if constexpr (M) d = d + k.momentum * static_cast<Acc>(m);
  return static_cast<T>(static_cast<Acc>(p) - k.lr * d);
}

// Calls f(std::bool_constant<flags>{}...) with each runtime flag as a compile-time constant.
template <typename F>
void with_flags(F&& f) {
  f();
}
template <typename F, typename... Flags>
void with_flags(F&& f, bool first, Flags... rest) {
  if (first) {
    with_flags([&](auto... done) { f(std::true_type{}, done...); }, rest...);
  } else {
    with_flags([&](auto... done) { f(std::false_type{}, done...); }, rest...);
  }
}

// adam_client_step_: the step Adam would take from the frozen state (m, v)
// with the corrected gradient gt = (g - a) + c, without writing the state:
//   m' = b1 m + (1 - b1) gt,  v' = b2 v + (1 - b2) gt^2,
//   p <- p - (lr / bc1) * m' / (sqrt(v') / sqrt(bc2) + eps),
// bc1 = 1 - b1^step, bc2 = 1 - b2^step (torch.optim.Adam's arrangement).
template <typename Acc>
struct AdamCoefs {
  Acc step_size, beta1, take1, beta2, take2, sqrt_bc2, eps;
};

// The step's scalars, computed in double and then rounded to Acc.
struct AdamScalars {
  double step_size, beta1, beta2, sqrt_bc2, eps;
  template <typename Acc>
  AdamCoefs<Acc> as() const {
    return {static_cast<Acc>(step_size), static_cast<Acc>(beta1), static_cast<Acc>(1.0 - beta1),
            static_cast<Acc>(beta2),     static_cast<Acc>(1.0 - beta2), static_cast<Acc>(sqrt_bc2),
            static_cast<Acc>(eps)};
  }
};

inline AdamScalars adam_scalars(double lr, double beta1, double beta2, double eps, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {lr / bc1, beta1, beta2, std::sqrt(bc2), eps};
}

template <bool A, bool C, typename T>
C10_HOST_DEVICE inline T adam_client_value(T p, T g, T a, T c, T m, T v, const AdamCoefs<at::opmath_type<T>>& k) {
  using Acc = at::opmath_type<T>;
  Acc gt = static_cast<Acc>(g);
  if constexpr (A) gt = gt - static_cast<Acc>(a);
  if constexpr (C) gt = gt + static_cast<Acc>(c);
  const Acc m1 = k.beta1 * static_cast<Acc>(m) + k.take1 * gt;
  const Acc v1 = k.beta2 * static_cast<Acc>(v) + k.take2 * (gt * gt);
  const Acc denom = std::sqrt(v1) / k.sqrt_bc2 + k.eps;
  return static_cast<T>(static_cast<Acc>(p) - k.step_size * (m1 / denom));
}

// adam_stats_update_: m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2.
template <typename T, typename Acc = at::opmath_type<T>>
C10_HOST_DEVICE inline void adam_stats_value(T& m, T& v, T g, Acc b1, Acc t1, Acc b2, Acc t2) {
  const Acc gg = static_cast<Acc>(g);
  m = static_cast<T>(b1 * static_cast<Acc>(m) + t1 * gg);
  v = static_cast<T>(b2 * static_cast<Acc>(v) + t2 * (gg * gg));
}

// mvr_update_: m <- a g + (1 - a) ((m + g) - g_prev)  (Cutkosky & Orabona's STORM).
template <typename T>
C10_HOST_DEVICE inline T mvr_value(T m, T g, T g_prev, at::opmath_type<T> a, at::opmath_type<T> keep) {
  using Acc = at::opmath_type<T>;
  const Acc gg = static_cast<Acc>(g);
  return static_cast<T>(a * gg + keep * ((static_cast<Acc>(m) + gg) - static_cast<Acc>(g_prev)));
}

}  // namespace robustagg
