// The decisions of the median and of MeaMed's window, shared by the CPU
// kernels (one SIMD lane per column) and the CUDA kernels (one thread per
// column), so that both devices give the same bits. V is double or a GCC
// vector of doubles; comparisons give a bool or a lane mask. Plain C++ (see
// cpu/coordinate_kernel.h).
//
// MeaMed keeps, per column, the w = n - f sorted values closest to the
// median: a window [k, k + w) of the sorted column. With f <= w the window
// slides right past position t (< f) iff the value entering on the right is
// strictly closer than the one leaving on the left (ties keep the smaller).
// With f > w (Bulyan's last stage) both values compared may lie on the same
// side of the median, where distances that round alike make the slide
// decisions non-monotone; the window then starts after the last position
// t (< f) whose value is strictly farther (sign removed) than the one w
// places to its right.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace robustagg {

template <typename V>
C10_HOST_DEVICE C10_ALWAYS_INLINE auto is_finite(V v) {
  return (v - v) == 0.0;
}

// (lo + hi) / 2, halving first when the sum of finite values overflows (exact
// for such large values), so that the midpoint of finite values is finite.
template <typename V>
C10_HOST_DEVICE C10_ALWAYS_INLINE V midpoint(V lo, V hi) {
  const V m = (lo + hi) * 0.5;
  return (!is_finite(m) && is_finite(lo) && is_finite(hi)) ? lo * 0.5 + hi * 0.5 : m;
}

// Whether the window is narrower than the f positions it may slide over.
C10_HOST_DEVICE C10_ALWAYS_INLINE bool meamed_window_is_narrow(int64_t n, int64_t f) { return f > n - f; }

// Whether `right` is strictly closer to the median m than `left`:
// (right - m) < (m - left), or with both differences' signs removed
// (kMagnitudes, for the narrow window). When a difference is not finite and
// m is, both are compared at half scale, where values that large halve
// exactly: a finite value whose distance overflows stays closer than an
// infinite one, and two such values are told apart.
template <bool kMagnitudes, typename V>
C10_HOST_DEVICE C10_ALWAYS_INLINE auto closer(V right, V m, V left) {
  V dr = right - m;
  V dl = m - left;
  const auto overflow = !(is_finite(dr) && is_finite(dl)) && is_finite(m);
  dr = overflow ? right * 0.5 - m * 0.5 : dr;
  dl = overflow ? m * 0.5 - left * 0.5 : dl;
  if constexpr (kMagnitudes) {
    dr = dr < 0.0 ? -dr : dr;  // NaN stays NaN: never closer
    dl = dl < 0.0 ? -dl : dl;
  }
  return dr < dl;
}

}  // namespace robustagg
