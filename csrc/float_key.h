// The order-preserving map from floating-point bits to signed integer keys
// that the selection rules sort, shared by the CPU kernels (on SIMD vectors
// of bit patterns) and the CUDA kernels (on one value): every NaN becomes the
// canonical quiet NaN, above +inf, and negative values get their magnitude
// bits flipped, so that signed integer order is numeric order. The map is its
// own inverse on keys. Plain C++ (see cpu/coordinate_kernel.h).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace robustagg {

// IEEE bit layout of the floats whose bit patterns are Int (int32_t: float32,
// also the key type of float16 and bfloat16; int64_t: float64).
template <typename Int>
struct FloatBits;

template <>
struct FloatBits<int32_t> {
  static constexpr int32_t kMagnitude = 0x7fffffff;  // every bit but the sign
  static constexpr int32_t kInfinity = 0x7f800000;
  static constexpr int32_t kQuietNaN = 0x7fc00000;
  static constexpr int kSignShift = 31;
};

template <>
struct FloatBits<int64_t> {
  static constexpr int64_t kMagnitude = 0x7fffffffffffffffLL;
  static constexpr int64_t kInfinity = 0x7ff0000000000000LL;
  static constexpr int64_t kQuietNaN = 0x7ff8000000000000LL;
  static constexpr int kSignShift = 63;
};

// A key above every key of a value, NaN included: pads a sorting network's inputs.
template <typename Int>
constexpr Int kPadKey = FloatBits<Int>::kMagnitude;

// Bits: Int, or a vector of Int lanes (GCC vector extensions).
template <typename Int, typename Bits>
C10_HOST_DEVICE C10_ALWAYS_INLINE Bits float_key(Bits bits) {
  using F = FloatBits<Int>;
  const Bits magnitude = bits & F::kMagnitude;
  bits = magnitude > F::kInfinity ? Bits{} + F::kQuietNaN : bits;
  return bits ^ ((bits >> F::kSignShift) & F::kMagnitude);
}

// The bits of the value whose key is `key`.
template <typename Int, typename Bits>
C10_HOST_DEVICE C10_ALWAYS_INLINE Bits key_bits(Bits key) {
  using F = FloatBits<Int>;
  return key ^ ((key >> F::kSignShift) & F::kMagnitude);
}

}  // namespace robustagg
