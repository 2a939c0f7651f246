// The CPU kernels' SIMD vectors: vector types at the native width of the
// instruction set and, per input kind, loads of a block of stored values as
// sortable keys (float_key.h) or float64 lanes. Included by the per-ISA kernel
// bodies (coordinate_kernel_impl.h, distance_kernel_impl.h); everything here
// is in an anonymous namespace, so every instruction set gets its own copy.
// Compiler builtins only.
#pragma once

#include <cstdint>

#include "cpu/coordinate_kernel.h"
#include "float_key.h"

namespace robustagg::cpu {
namespace {

// Vector types at the native width of the instruction set (ROBUSTAGG_VEC_BYTES:
// 64 for AVX-512, 32 for AVX2, 16 for baseline SSE2/NEON). Wider types would
// be lowered by GCC through spills or lane by lane.
constexpr int kVecBytes = ROBUSTAGG_VEC_BYTES;
constexpr int kLanes32 = kVecBytes / 4;  // columns per block for 32-bit keys
constexpr int kLanes64 = kVecBytes / 8;  // columns per block for 64-bit keys
typedef int32_t I32v __attribute__((vector_size(ROBUSTAGG_VEC_BYTES)));
typedef float F32v __attribute__((vector_size(ROBUSTAGG_VEC_BYTES)));
typedef int64_t I64v __attribute__((vector_size(ROBUSTAGG_VEC_BYTES)));
typedef double F64v __attribute__((vector_size(ROBUSTAGG_VEC_BYTES)));
typedef double F64w __attribute__((vector_size(2 * ROBUSTAGG_VEC_BYTES)));    // kLanes32 doubles
typedef float F32h __attribute__((vector_size(ROBUSTAGG_VEC_BYTES / 2)));     // kLanes64 floats
typedef uint16_t U16h __attribute__((vector_size(ROBUSTAGG_VEC_BYTES / 2)));  // kLanes32 halves

#define RA_INLINE static inline __attribute__((always_inline))

// IEEE half -> float32 bits, exact for normals, subnormals, inf and NaN:
// shifting the exponent/mantissa into place and multiplying by 2^112 rebiases
// the exponent (and normalises subnormals).
RA_INLINE I32v half_to_f32_bits(I32v h) {
  const I32v sign = (h & 0x8000) << 16;
  const I32v em = h & 0x7fff;
  const F32v scaled = (F32v)(em << 13) * 0x1p112f;
  const I32v finite_bits = (I32v)scaled;
  const I32v special_bits = (em << 13) | 0x7f800000;
  return sign | (em >= 0x7c00 ? special_bits : finite_bits);
}

// kLanes32 16-bit values (the bits of float16 or bfloat16), one per 32-bit lane.
RA_INLINE I32v load_u16(const uint16_t* p) {
  U16h h;
  __builtin_memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, I32v);
}

// kLanes64 float32 values as float64 (exact). GCC 12 lowers the generic
// conversion as two half-width conversions and an insert (on AVX-512 and on
// AVX2 alike); the builtins are one instruction (AVX-512's rounding argument
// 4: the current mode).
RA_INLINE F64v f32_to_f64(F32h h) {
#if ROBUSTAGG_VEC_BYTES == 64
  return __builtin_ia32_cvtps2pd512_mask(h, F64v{}, static_cast<unsigned char>(-1), 4);
#elif ROBUSTAGG_VEC_BYTES == 32
  return __builtin_ia32_cvtps2pd256(h);
#else
  return __builtin_convertvector(h, F64v);
#endif
}

// Part h (lanes h * kLanes64 ...) of float32 lanes, widened to float64 at the
// native width, which keeps the rules' float64 compares and selects vectorised.
RA_INLINE F64v widen_part(F32v v, int h) {
  F32h part;
  __builtin_memcpy(&part, reinterpret_cast<const float*>(&v) + h * kLanes64, sizeof(part));
  return f32_to_f64(part);
}

// A block's lanes in float64: P native vectors of kLanes64 lanes.
template <int P>
struct Wide {
  F64v part[P];
};

// Per input kind: key vector type, lanes, and conversions. Keys of 32-bit
// kinds are read out as two float64 parts of kLanes64 lanes each. Hot loops
// take a block's float64 values as native parts (load_parts): GCC lowers the
// double-width Dbl of load_double through the stack on AVX2.
template <InputKind K>
struct Lanes;

struct Lanes32 {
  using Key = I32v;
  using Dbl = F64w;
  static constexpr int W = kLanes32;
  static constexpr int kParts = 2;
  static constexpr int32_t kPad = kPadKey<int32_t>;
  RA_INLINE Wide<kParts> to_double(Key key) {
    const F32v v = (F32v)key_bits<int32_t>(key);
    return {{widen_part(v, 0), widen_part(v, 1)}};
  }
};

// The kinds with 32-bit keys differ only in widen_bits, the float32 bit
// patterns of one block of stored values (exact); their loads are these. A
// macro rather than a template base: the template changed GCC's inlining
// decisions in the baseline kernels.
#define ROBUSTAGG_LANES32_LOADS                                                                         \
  RA_INLINE Key load(const In* p) { return float_key<int32_t>(widen_bits(p)); }                         \
  RA_INLINE Dbl load_double(const In* p) { return __builtin_convertvector((F32v)widen_bits(p), F64w); } \
  RA_INLINE Wide<kParts> load_parts(const In* p) {                                                      \
    const F32v v = (F32v)widen_bits(p);                                                                 \
    return {{widen_part(v, 0), widen_part(v, 1)}};                                                      \
  }

template <>
struct Lanes<InputKind::kF32> : Lanes32 {
  using In = float;
  RA_INLINE I32v widen_bits(const In* p) {
    I32v bits;
    __builtin_memcpy(&bits, p, sizeof(bits));
    return bits;
  }
  ROBUSTAGG_LANES32_LOADS
};

template <>
struct Lanes<InputKind::kF16> : Lanes32 {
  using In = uint16_t;
  RA_INLINE I32v widen_bits(const In* p) { return half_to_f32_bits(load_u16(p)); }
  ROBUSTAGG_LANES32_LOADS
};

template <>
struct Lanes<InputKind::kBF16> : Lanes32 {
  using In = uint16_t;
  RA_INLINE I32v widen_bits(const In* p) { return load_u16(p) << 16; }
  ROBUSTAGG_LANES32_LOADS
};

#undef ROBUSTAGG_LANES32_LOADS

template <>
struct Lanes<InputKind::kF64> {
  using In = double;
  using Key = I64v;
  using Dbl = F64v;
  static constexpr int W = kLanes64;
  static constexpr int kParts = 1;
  static constexpr int64_t kPad = kPadKey<int64_t>;
  RA_INLINE Key load(const In* p) {
    I64v bits;
    __builtin_memcpy(&bits, p, sizeof(bits));
    return float_key<int64_t>(bits);
  }
  RA_INLINE Wide<kParts> to_double(Key key) { return {{(F64v)key_bits<int64_t>(key)}}; }
  RA_INLINE Dbl load_double(const In* p) {
    F64v v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  RA_INLINE Wide<kParts> load_parts(const In* p) { return {{load_double(p)}}; }
};

// Loads the W-column block starting at column j0 (cnt <= W valid columns;
// missing lanes repeat column j0) through `convert`.
template <InputKind K, typename Convert>
RA_INLINE auto load_block(const typename Lanes<K>::In* p, int64_t cnt, Convert convert) {
  using L = Lanes<K>;
  if (cnt == L::W) return convert(p);
  typename L::In tail[L::W];
  for (int l = 0; l < L::W; ++l) tail[l] = l < cnt ? p[l] : p[0];
  return convert(tail);
}

}  // namespace
}  // namespace robustagg::cpu
