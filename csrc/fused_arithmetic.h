// The arithmetic of one element of the fused updates, shared by the CPU and
// CUDA kernels (C10_HOST_DEVICE), so that both devices give the same bits.
// Every update is computed in at::opmath_type<T> (float32 for float32 and
// the half types, float64 for float64), each operation rounded once: the
// builds forbid contracting a product and a sum into an FMA.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace robustagg {

// masked_sgd_step_'s masks: absent (all set), one bool per element, or packed bits.
enum class MaskKind { kNone, kBool, kPacked };

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
    return {static_cast<Acc>(step_size), static_cast<Acc>(beta1),       static_cast<Acc>(1.0 - beta1),
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
