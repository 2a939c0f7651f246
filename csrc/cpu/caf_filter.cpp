// CAF's filter loop (SPEC 3) on the host, over the (n, n) squared distances:
// each round is a handful of O(n^2) loops and one n x n eigensolve, which in
// Python cost ~35 library calls of a few microseconds each.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace robustagg::cpu {
namespace {

// One round on the active rows: lambda, the top eigenvalue of
// sum_i w_i y_i y_i^T with G_ij = y_i . y_j the centred Gram matrix around
// mu = sum_i w_i y_i, and ratio_i = t_i / max t for the squared projections
// t_i = (y_i . v)^2 on its unit eigenvector v. lambda = 0 when the weighted
// rows coincide (ratio is then unused).
double top_eigenpair(const std::vector<double>& Da, const std::vector<double>& w, std::vector<double>& ratio) {
  const size_t m = w.size();
  // Classical scaling, G = -1/2 (I - 1 w^T) D (I - w 1^T); each sum runs in
  // index order, so equal rows of D give equal rows of G.
  std::vector<double> Dw(m, 0.0);
  double total = 0.0;
  for (size_t i = 0; i < m; ++i) {
    for (size_t k = 0; k < m; ++k) Dw[i] += Da[i * m + k] * w[k];
    total += Dw[i] * w[i];
  }
  std::vector<double> G(m * m);
  double top = 0.0;
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < m; ++j) {
      G[i * m + j] = -0.5 * (Da[i * m + j] - Dw[j] - Dw[i] + total);
      top = std::max(top, std::abs(G[i * m + j]));
    }
  if (!(top > 0.0)) return 0.0;
  // Divided by a power of two (exact), so that t, a square of G's scale,
  // cannot overflow; lambda scales back.
  int exponent = 0;
  std::frexp(top, &exponent);
  const double s = std::ldexp(1.0, exponent);
  std::vector<double> r(m);
  for (size_t i = 0; i < m; ++i) r[i] = std::sqrt(w[i]);
  at::Tensor M = at::empty({static_cast<int64_t>(m), static_cast<int64_t>(m)}, at::kDouble);
  double* Mp = M.mutable_data_ptr<double>();
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < m; ++j) {
      G[i * m + j] /= s;
      Mp[i * m + j] = r[i] * G[i * m + j] * r[j];
    }
  const auto [values, vectors] = at::linalg_eigh(M);
  const double lambda = values.const_data_ptr<double>()[m - 1];
  if (!(lambda > 0.0)) return 0.0;
  // u = r * v for the top eigenvector v (the last column), and t = (G u)^2 by
  // rows in index order: equal rows of G give equal t, so that duplicated
  // rows leave the filter together.
  const at::Tensor V = vectors.contiguous();
  const double* Vp = V.const_data_ptr<double>();
  std::vector<double> u(m);
  for (size_t j = 0; j < m; ++j) u[j] = r[j] * Vp[j * m + (m - 1)];
  double t_max = 0.0;
  for (size_t i = 0; i < m; ++i) {
    double p = 0.0;
    for (size_t j = 0; j < m; ++j) p += G[i * m + j] * u[j];
    ratio[i] = p * p;
    t_max = std::max(t_max, ratio[i]);
  }
  if (!(t_max > 0.0)) return 0.0;
  for (size_t i = 0; i < m; ++i) ratio[i] /= t_max;
  return lambda * s;
}

at::Tensor caf_weights_cpu(const at::Tensor& D_in, const at::Tensor& finite_in, int64_t f) {
  constexpr const char* rule = "caf_weights";
  TORCH_CHECK_VALUE(D_in.dim() == 2 && D_in.size(0) == D_in.size(1),
                    message(rule, ": D must be a square (n, n) matrix, got shape ", D_in.sizes()));
  const int64_t n = D_in.size(0);
  TORCH_CHECK_TYPE(D_in.scalar_type() == at::kDouble, message(rule, ": D must be float64, got ", D_in.scalar_type()));
  TORCH_CHECK_TYPE(finite_in.scalar_type() == at::kBool,
                   message(rule, ": finite must be bool, got ", finite_in.scalar_type()));
  TORCH_CHECK_VALUE(finite_in.dim() == 1 && finite_in.size(0) == n,
                    message(rule, ": finite must have shape (", n, "), got ", finite_in.sizes()));
  TORCH_CHECK_VALUE(f >= 0 && 2 * f < n, message(rule, ": f=", f, " needs 0 <= f and n > 2*f, got n=", n));
  const at::Tensor D = D_in.contiguous();
  const at::Tensor finite = finite_in.contiguous();
  const double* Dp = D.const_data_ptr<double>();
  const bool* fp = finite.const_data_ptr<bool>();

  std::vector<double> c(n);
  for (int64_t i = 0; i < n; ++i) c[i] = fp[i] ? 1.0 : 0.0;
  std::vector<double> best_c = c;
  double best = std::numeric_limits<double>::infinity();
  std::vector<int64_t> active;
  std::vector<double> Da, w, ratio;
  for (;;) {
    double sum = 0.0;
    for (double ci : c) sum += ci;
    if (!(sum > static_cast<double>(n - 2 * f))) break;
    active.clear();
    for (int64_t i = 0; i < n; ++i)
      if (c[i] > 0.0) active.push_back(i);
    const size_t m = active.size();
    double active_sum = 0.0;
    for (int64_t i : active) active_sum += c[i];
    w.resize(m);
    for (size_t a = 0; a < m; ++a) w[a] = c[active[a]] / active_sum;
    Da.resize(m * m);
    for (size_t a = 0; a < m; ++a)
      for (size_t b = 0; b < m; ++b) Da[a * m + b] = Dp[active[a] * n + active[b]];
    ratio.assign(m, 0.0);
    const double lambda = top_eigenpair(Da, w, ratio);
    if (lambda < best) {
      best = lambda;
      best_c = c;
    }
    if (lambda == 0.0) break;
    // The row of largest tau gets ratio 1 and weight 0: the loop ends within n rounds.
    for (size_t a = 0; a < m; ++a) c[active[a]] *= 1.0 - ratio[a];
  }
  double best_sum = 0.0;
  for (double ci : best_c) best_sum += ci;
  at::Tensor out = at::zeros({n}, D.options());
  double* o = out.mutable_data_ptr<double>();
  if (best_sum > 0.0)
    for (int64_t i = 0; i < n; ++i) o[i] = best_c[i] / best_sum;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) { m.impl("caf_weights", &caf_weights_cpu); }

}  // namespace robustagg::cpu
