// Argument checks shared by the CPU and CUDA kernels. Bad arguments raise
// ValueError / TypeError (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) with a message
// that names the rule, the argument and its value (SPEC 1).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>

#include "column_rule.h"

namespace robustagg {

// Error messages are assembled here as one std::string, which c10::str passes
// through untouched, rather than through c10::str's stream formatting: that
// formatting crashed on one toolchain (docs/design.md, "Errors").
namespace detail {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, int v) { s += std::to_string(v); }
inline void append(std::string& s, long v) { s += std::to_string(v); }
inline void append(std::string& s, long long v) { s += std::to_string(v); }
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  s += buf;
}
inline void append(std::string& s, at::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void append(std::string& s, at::ScalarType t) { s += c10::toString(t); }
inline void append(std::string& s, const c10::Device& d) { s += d.str(); }
}  // namespace detail

template <typename... Args>
std::string message(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// X must be a 2-D floating tensor (n, d) with n >= 1.
inline void check_matrix(const at::Tensor& X, const char* rule) {
  TORCH_CHECK_TYPE(is_supported_float(X.scalar_type()),
                   message(rule, ": X must be float32, float64, float16 or bfloat16, got ", X.scalar_type()));
  TORCH_CHECK_VALUE(X.dim() == 2, message(rule, ": X must be 2-D (n, d), got ", X.dim(), "-D with shape ", X.sizes()));
  TORCH_CHECK_VALUE(X.size(0) >= 1, message(rule, ": X needs at least one row, got n=0"));
}

// Rules that drop f values on each side need n > 2f.
inline void check_trim(const at::Tensor& X, int64_t f, const char* rule) {
  check_matrix(X, rule);
  TORCH_CHECK_VALUE(f >= 0, message(rule, ": f must be >= 0, got f=", f));
  const int64_t n = X.size(0);
  // n > 2f written so that no product can overflow.
  TORCH_CHECK_VALUE(f <= (n - 1) / 2, message(rule, ": f=", f, " needs n > 2*f, got n=", n));
}

// Rules that keep `keep` values per coordinate need 1 <= keep <= n.
inline void check_keep(const at::Tensor& X, int64_t keep, const char* rule) {
  check_matrix(X, rule);
  const int64_t n = X.size(0);
  TORCH_CHECK_VALUE(keep >= 1 && keep <= n, message(rule, ": keep must be in [1, n=", n, "], got keep=", keep));
}

// Weights: a 1-D tensor of n finite, non-negative numbers with a positive sum,
// on X's device. Returns them as float64 on X's device, times the power of
// two that brings the largest into [1, 2), and their sum, added in index
// order as the kernels do. The power of two changes no mean (products and
// sums scale exactly, unless a weight is below 2**-1022 of the largest), and
// neither the sum of the weights nor a product with a value then overflows.
// For CUDA weights the value checks cost one copy of n numbers to the host.
inline at::Tensor check_weights(const at::Tensor& X, const at::Tensor& w, const char* rule, double* sum_out) {
  const int64_t n = X.size(0);
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()) || at::isIntegralType(w.scalar_type(), /*includeBool=*/false),
                   message(rule, ": weights must be a real tensor, got ", w.scalar_type()));
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n,
                    message(rule, ": weights must have shape (n,) = (", n, ",), got ", w.sizes()));
  TORCH_CHECK_VALUE(w.device() == X.device(),
                    message(rule, ": weights are on ", w.device(), " but X is on ", X.device()));
  at::Tensor host = w.to(at::kDouble).cpu().contiguous().clone();
  double* p = host.data_ptr<double>();
  double top = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(p[i]) && p[i] >= 0.0,
                      message(rule, ": weights must be finite and >= 0, got weights[", i, "]=", p[i]));
    top = std::max(top, p[i]);
  }
  TORCH_CHECK_VALUE(top > 0.0, message(rule, ": weights must have a positive sum, got 0"));
  // ldexp per weight: 2**-e itself may lie outside the float64 range (subnormal weights).
  const int e = std::ilogb(top);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    p[i] = std::ldexp(p[i], -e);
    sum += p[i];
  }
  *sum_out = sum;
  return host.to(X.device());
}

// An optional extra row for the distance ops: a (d,) tensor of X's dtype on X's device.
inline void check_center(const at::Tensor& X, const at::Tensor& center, const char* rule, const char* name = "center") {
  TORCH_CHECK_VALUE(center.dim() == 1 && center.size(0) == X.size(1),
                    message(rule, ": ", name, " must have shape (d,) = (", X.size(1), ",), got ", center.sizes()));
  TORCH_CHECK_VALUE(center.device() == X.device(),
                    message(rule, ": ", name, " is on ", center.device(), " but X is on ", X.device()));
  TORCH_CHECK_TYPE(center.scalar_type() == X.scalar_type(),
                   message(rule, ": ", name, " must have X's dtype ", X.scalar_type(), ", got ", center.scalar_type()));
}

// The rows of the distance ops: X, and the optional extra row.
inline void check_rows(const at::Tensor& X, const std::optional<at::Tensor>& center, const char* rule,
                       const char* name = "center") {
  check_matrix(X, rule);
  if (center.has_value()) check_center(X, *center, rule, name);
}

// Mixing coefficients: a (k, m) float64 tensor on X's device, m = n (+1 with a center).
inline void check_coefficients(const at::Tensor& C, const at::Tensor& X, bool has_center, const char* rule) {
  const int64_t m = X.size(0) + (has_center ? 1 : 0);
  TORCH_CHECK_TYPE(C.scalar_type() == at::kDouble, message(rule, ": C must be float64, got ", C.scalar_type()));
  TORCH_CHECK_VALUE(C.dim() == 2 && C.size(1) == m,
                    message(rule, ": C must have shape (k, ", m, ") for ", X.size(0), " rows",
                            has_center ? " and a center" : "", ", got ", C.sizes()));
  TORCH_CHECK_VALUE(C.device() == X.device(), message(rule, ": C is on ", C.device(), " but X is on ", X.device()));
}

// Row-major view with unit column stride; copies only when the columns are strided.
inline at::Tensor unit_column_stride(const at::Tensor& X) {
  return (X.stride(1) == 1 || X.size(1) <= 1) ? X : X.contiguous();
}

// Multi-tensor updates: two equally long lists whose i-th tensors match in
// shape, dtype and device; every tensor floating point and on `device`.
inline void check_tensor_pairs(at::TensorList a, at::TensorList b, const char* a_name, const char* b_name,
                               const char* rule) {
  TORCH_CHECK_VALUE(a.size() == b.size(),
                    message(rule, ": ", a_name, " and ", b_name, " must be equally long lists, got ",
                            static_cast<long long>(a.size()), " and ", static_cast<long long>(b.size()), " tensors"));
  for (size_t i = 0; i < a.size(); ++i) {
    const long long k = static_cast<long long>(i);
    TORCH_CHECK_TYPE(is_supported_float(a[i].scalar_type()),
                     message(rule, ": ", a_name, "[", k, "] must be float32, float64, float16 or bfloat16, got ",
                             a[i].scalar_type()));
    TORCH_CHECK_TYPE(b[i].scalar_type() == a[i].scalar_type(),
                     message(rule, ": ", b_name, "[", k, "] must have ", a_name, "[", k, "]'s dtype ",
                             a[i].scalar_type(), ", got ", b[i].scalar_type()));
    TORCH_CHECK_VALUE(b[i].sizes() == a[i].sizes(), message(rule, ": ", b_name, "[", k, "] must have ", a_name, "[", k,
                                                            "]'s shape ", a[i].sizes(), ", got ", b[i].sizes()));
    TORCH_CHECK_VALUE(a[i].device() == a[0].device() && b[i].device() == a[0].device(),
                      message(rule, ": all tensors must be on one device; ", a_name, "[0] is on ", a[0].device(), ", ",
                              a_name, "[", k, "] on ", a[i].device(), ", ", b_name, "[", k, "] on ", b[i].device()));
  }
}

}  // namespace robustagg
