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
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "writes.h"

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
  check_writes({{"buffers", buffers, true}, {"grads", grads, false}}, kRule);
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
  check_writes({{"params", params, true},
                {"grads", grads, false},
                {"anchor_grads", anchor_grads, false},
                {"control", control, false},
                {"momentum", momentum, false}},
               kRule);
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
  check_writes({{"params", params, true},
                {"grads", grads, false},
                {"anchor_grads", anchor_grads, false},
                {"control", control, false},
                {"exp_avg", exp_avg, false},
                {"exp_avg_sq", exp_avg_sq, false}},
               kRule);
}

inline void check_adam_stats_update(at::TensorList exp_avg, at::TensorList exp_avg_sq, at::TensorList grads,
                                    double beta1, double beta2) {
  constexpr const char* kRule = "adam_stats_update_";
  check_tensor_pairs(exp_avg, exp_avg_sq, "exp_avg", "exp_avg_sq", kRule);
  check_tensor_pairs(exp_avg, grads, "exp_avg", "grads", kRule);
  check_unit(beta1, "beta1", kRule);
  check_unit(beta2, "beta2", kRule);
  check_writes({{"exp_avg", exp_avg, true}, {"exp_avg_sq", exp_avg_sq, true}, {"grads", grads, false}}, kRule);
}

inline void check_mvr_update(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  constexpr const char* kRule = "mvr_update_";
  check_tensor_pairs(momentum, grads, "momentum", "grads", kRule);
  check_tensor_pairs(momentum, prev_grads, "momentum", "prev_grads", kRule);
  check_unit(a, "a", kRule);
  check_writes({{"momentum", momentum, true}, {"grads", grads, false}, {"prev_grads", prev_grads, false}}, kRule);
}

// weighted_step_: grads holds the N + 1 users' lists one after the other,
// corrections the N collaborators' lists (users 1..N), each list shaped like params.
inline void check_weighted_step(at::TensorList params, at::TensorList grads,
                                const std::optional<at::TensorList>& corrections, at::ArrayRef<double> weights,
                                double lr, double beta) {
  constexpr const char* kRule = "weighted_step_";
  const size_t count = params.size();
  const size_t users = weights.size();
  TORCH_CHECK_VALUE(users >= 1, message(kRule, ": weights must hold N + 1 >= 1 numbers, got none"));
  TORCH_CHECK_VALUE(grads.size() == users * count,
                    message(kRule, ": grads must hold N + 1 = ", static_cast<long long>(users), " lists of ",
                            static_cast<long long>(count), " tensors, got ", static_cast<long long>(grads.size()),
                            " tensors"));
  for (size_t u = 0; u < users; ++u) {
    const std::string name = message("grads[", static_cast<long long>(u), "]");
    TORCH_CHECK_VALUE(std::isfinite(weights[u]), message(kRule, ": weights must be finite, got weights[",
                                                         static_cast<long long>(u), "]=", weights[u]));
    check_tensor_pairs(params, grads.slice(u * count, count), "params", name.c_str(), kRule);
  }
  if (corrections.has_value()) {
    TORCH_CHECK_VALUE(corrections->size() == (users - 1) * count,
                      message(kRule, ": corrections must hold N = ", static_cast<long long>(users - 1), " lists of ",
                              static_cast<long long>(count), " tensors, got ",
                              static_cast<long long>(corrections->size()), " tensors"));
    for (size_t u = 0; u + 1 < users; ++u) {
      const std::string name = message("corrections[", static_cast<long long>(u), "]");
      check_tensor_pairs(params, corrections->slice(u * count, count), "params", name.c_str(), kRule);
    }
  }
  check_finite(lr, "lr", kRule);
  check_unit(beta, "beta", kRule);
  // A correction is written while other users' gradients are still to be read: no alias.
  check_writes({{"params", params, true},
                {"corrections", corrections, true, count, /*reads_may_alias=*/false},
                {"grads", grads, false, count}},
               kRule);
}

enum class MaskKind { kNone, kBool, kPacked };

// masked_sgd_step_: masks[i] is a bool tensor shaped like params[i] or a
// uint8 tensor of ceil(numel / 8) bytes (bit j of byte k: element 8k + j);
// one kind for the whole call.
inline MaskKind check_masks(at::TensorList params, const std::optional<at::TensorList>& masks, const char* rule) {
  if (!masks.has_value()) return MaskKind::kNone;
  TORCH_CHECK_VALUE(masks->size() == params.size(),
                    message(rule, ": params and masks must be equally long lists, got ",
                            static_cast<long long>(params.size()), " and ", static_cast<long long>(masks->size()),
                            " tensors"));
  if (params.empty()) return MaskKind::kBool;
  const MaskKind kind = (*masks)[0].scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kPacked;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& m = (*masks)[i];
    const long long k = static_cast<long long>(i);
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || m.scalar_type() == at::kByte,
                     message(rule, ": masks[", k, "] must be bool or uint8 (packed bits), got ", m.scalar_type()));
    TORCH_CHECK_TYPE((m.scalar_type() == at::kBool) == (kind == MaskKind::kBool),
                     message(rule, ": masks must be all bool or all uint8 (packed), masks[0] is ",
                             (*masks)[0].scalar_type(), " and masks[", k, "] ", m.scalar_type()));
    TORCH_CHECK_VALUE(m.device() == params[i].device(),
                      message(rule, ": masks[", k, "] is on ", m.device(), " but params[", k, "] on ",
                              params[i].device()));
    if (kind == MaskKind::kBool) {
      TORCH_CHECK_VALUE(m.sizes() == params[i].sizes(), message(rule, ": masks[", k, "] must have params[", k,
                                                                "]'s shape ", params[i].sizes(), ", got ", m.sizes()));
    } else {
      const int64_t bytes = (params[i].numel() + 7) / 8;
      TORCH_CHECK_VALUE(m.dim() == 1 && m.numel() == bytes,
                        message(rule, ": packed masks[", k, "] must be 1-D with ceil(numel / 8) = ", bytes,
                                " bytes, got shape ", m.sizes()));
    }
  }
  return kind;
}

inline MaskKind check_masked_sgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum,
                                      const std::optional<at::TensorList>& masks, double lr, double mu,
                                      double weight_decay) {
  constexpr const char* kRule = "masked_sgd_step_";
  check_tensor_pairs(params, grads, "params", "grads", kRule);
  check_tensor_pairs(params, momentum, "params", "momentum_buffers", kRule);
  check_finite(lr, "lr", kRule);
  check_finite(mu, "momentum", kRule);
  check_finite(weight_decay, "weight_decay", kRule);
  const MaskKind kind = check_masks(params, masks, kRule);
  check_writes({{"params", params, true},
                {"momentum_buffers", momentum, true},
                {"grads", grads, false},
                {"masks", masks, false}},
               kRule);
  return kind;
}

// weighted_step_'s lists in the kernels' order: params, then the N corrections
// (when present), then the N + 1 users' grads; the first `writes` are written.
struct WeightedLists {
  std::vector<std::optional<at::TensorList>> lists;
  size_t writes;
};

inline WeightedLists weighted_step_lists(at::TensorList params, at::TensorList grads,
                                         const std::optional<at::TensorList>& corrections, int64_t collaborators) {
  const size_t count = params.size();
  WeightedLists out{{params}, 1};
  if (corrections.has_value()) {
    for (int64_t u = 0; u < collaborators; ++u) out.lists.emplace_back(corrections->slice(u * count, count));
    out.writes += collaborators;
  }
  for (int64_t u = 0; u <= collaborators; ++u) out.lists.emplace_back(grads.slice(u * count, count));
  return out;
}

// Calls f(std::integral_constant<MaskKind, kind>{}) and f(std::bool_constant<decay>{}) as compile-time flags.
template <typename F>
void with_mask_kind(MaskKind kind, bool decay, F&& f) {
  const auto run = [&](auto kind_tag) { with_flags([&](auto wd) { f(wd, kind_tag); }, decay); };
  switch (kind) {
    case MaskKind::kNone:
      return run(std::integral_constant<MaskKind, MaskKind::kNone>{});
    case MaskKind::kBool:
      return run(std::integral_constant<MaskKind, MaskKind::kBool>{});
    case MaskKind::kPacked:
      return run(std::integral_constant<MaskKind, MaskKind::kPacked>{});
  }
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

// weighted_step_, one collaborator's term: u <- (u + a g) + c, then the
// correction c <- keep c + take (a (g0 - g)), keep = 1 - beta, take = beta.
template <typename T, typename Acc = at::opmath_type<T>>
C10_HOST_DEVICE inline Acc collaborator_term(Acc u, T g, Acc a) {
  return u + a * static_cast<Acc>(g);
}

template <typename T, typename Acc = at::opmath_type<T>>
C10_HOST_DEVICE inline T correction_value(T c, T g0, T g, Acc a, Acc keep, Acc take) {
  return static_cast<T>(keep * static_cast<Acc>(c) + take * (a * (static_cast<Acc>(g0) - static_cast<Acc>(g))));
}

template <typename T, typename Acc = at::opmath_type<T>>
C10_HOST_DEVICE inline T descend(T p, Acc lr, Acc u) {
  return static_cast<T>(static_cast<Acc>(p) - lr * u);
}

// masked_sgd_step_ on an active element, torch.optim.SGD's arrangement:
// d = g (+ wd p), m <- mu m + d, p <- p - lr m with the stored (rounded) m.
template <bool WD, typename T, typename Acc = at::opmath_type<T>>
C10_HOST_DEVICE inline void sgd_momentum_value(T p, T m, T g, Acc lr, Acc mu, Acc wd, T& p_out, T& m_out) {
  Acc d = static_cast<Acc>(g);
  if constexpr (WD) d = d + wd * static_cast<Acc>(p);
  m_out = static_cast<T>(mu * static_cast<Acc>(m) + d);
  p_out = static_cast<T>(static_cast<Acc>(p) - lr * static_cast<Acc>(m_out));
}

// Whether element i of a mask is set: one byte per element, or bit i % 8 of byte i / 8.
template <MaskKind Kind>
C10_HOST_DEVICE inline bool mask_bit(const uint8_t* mask, int64_t i) {
  if constexpr (Kind == MaskKind::kNone) return true;
  if constexpr (Kind == MaskKind::kBool) return mask[i] != 0;
  return ((mask[i >> 3] >> (i & 7)) & 1) != 0;
}

}  // namespace robustagg
