// Argument checks of the fused multi-tensor updates (SPEC 6), shared by the
// CPU and CUDA kernels: done for the whole call before anything is written
// (with writes.h's checks of the written tensors).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "common.h"
#include "fused_arithmetic.h"
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
                              const std::optional<at::TensorList>& control,
                              const std::optional<at::TensorList>& momentum, double lr, double coef_grad,
                              double coef_anchor, double coef_control, double coef_momentum) {
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
  TORCH_CHECK_VALUE(
      grads.size() == users * count,
      message(kRule, ": grads must hold N + 1 = ", static_cast<long long>(users), " lists of ",
              static_cast<long long>(count), " tensors, got ", static_cast<long long>(grads.size()), " tensors"));
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

// masked_sgd_step_: masks[i] is a bool tensor shaped like params[i] or a
// uint8 tensor of ceil(numel / 8) bytes (bit j of byte k: element 8k + j);
// one kind for the whole call.
inline MaskKind check_masks(at::TensorList params, const std::optional<at::TensorList>& masks, const char* rule) {
  if (!masks.has_value()) return MaskKind::kNone;
  TORCH_CHECK_VALUE(masks->size() == params.size(), message(rule, ": params and masks must be equally long lists, got ",
                                                            static_cast<long long>(params.size()), " and ",
                                                            static_cast<long long>(masks->size()), " tensors"));
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
    TORCH_CHECK_VALUE(m.device() == params[i].device(), message(rule, ": masks[", k, "] is on ", m.device(),
                                                                " but params[", k, "] on ", params[i].device()));
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

}  // namespace robustagg
