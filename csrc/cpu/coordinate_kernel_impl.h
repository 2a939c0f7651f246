// Column kernel bodies, included once per instruction set by
// coordinate_isa_*.cpp with ROBUSTAGG_ISA_SUFFIX set. Everything here has
// internal linkage and uses only compiler builtins (see coordinate_kernel.h).
//
// Method: a block of W adjacent columns is processed at once, one SIMD lane
// per column. Each of the n rows contributes one vector (its W consecutive
// values, no transpose). For the selection rules the values are mapped to
// integer keys whose signed order is the float order with NaN above +inf; a
// sorting network (Batcher's odd-even merge sort) applied lane-wise sorts
// every column; the order statistics a rule needs are then read out and
// combined in float64. The mean accumulates the rows in float64.
#include <utility>

#include "batcher.h"
#include "cpu/coordinate_kernel.h"

#define ROBUSTAGG_CAT2(a, b) a##b
#define ROBUSTAGG_CAT(a, b) ROBUSTAGG_CAT2(a, b)

namespace robustagg::cpu {
namespace {

typedef int32_t I32x16 __attribute__((vector_size(64)));
typedef float F32x16 __attribute__((vector_size(64)));
typedef int64_t I64x8 __attribute__((vector_size(64)));
typedef double F64x8 __attribute__((vector_size(64)));
typedef double F64x16 __attribute__((vector_size(128)));
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef float F32x8 __attribute__((vector_size(32)));

#define RA_INLINE static inline __attribute__((always_inline))

// Signed-integer key of a float32 bit pattern: every NaN becomes the canonical
// quiet NaN (above +inf); negative values get their magnitude bits flipped so
// that signed integer order equals numeric order. The map is its own inverse.
RA_INLINE I32x16 f32_key(I32x16 bits) {
  const I32x16 mag = bits & 0x7fffffff;
  bits = mag > 0x7f800000 ? (I32x16{} + 0x7fc00000) : bits;
  return bits ^ ((bits >> 31) & 0x7fffffff);
}
RA_INLINE I32x16 f32_unkey(I32x16 key) { return key ^ ((key >> 31) & 0x7fffffff); }

RA_INLINE I64x8 f64_key(I64x8 bits) {
  const I64x8 mag = bits & 0x7fffffffffffffffLL;
  bits = mag > 0x7ff0000000000000LL ? (I64x8{} + 0x7ff8000000000000LL) : bits;
  return bits ^ ((bits >> 63) & 0x7fffffffffffffffLL);
}
RA_INLINE I64x8 f64_unkey(I64x8 key) { return key ^ ((key >> 63) & 0x7fffffffffffffffLL); }

// IEEE half -> float32 bits, exact for normals, subnormals, inf and NaN:
// shifting the exponent/mantissa into place and multiplying by 2^112 rebiases
// the exponent (and normalises subnormals).
RA_INLINE I32x16 half_to_f32_bits(I32x16 h) {
  const I32x16 sign = (h & 0x8000) << 16;
  const I32x16 em = h & 0x7fff;
  const F32x16 scaled = (F32x16)(em << 13) * 0x1p112f;
  const I32x16 finite_bits = (I32x16)scaled;
  const I32x16 special_bits = (em << 13) | 0x7f800000;
  return sign | (em >= 0x7c00 ? special_bits : finite_bits);
}

// Per input kind: key vector type, lanes, and conversions.
template <InputKind K>
struct Lanes;

template <>
struct Lanes<InputKind::kF32> {
  using In = float;
  using Key = I32x16;
  using Dbl = F64x16;
  static constexpr int W = 16;
  static constexpr int32_t kPad = 0x7fffffff;  // above every key, NaN included
  RA_INLINE Key load(const In* p) {
    I32x16 bits;
    __builtin_memcpy(&bits, p, sizeof(bits));
    return f32_key(bits);
  }
  // Half h (lanes 8h .. 8h+7) of a key vector as float64: the selection
  // rules' float64 arithmetic stays at the native width of AVX-512, which
  // GCC would otherwise lower lane by lane for compares and selects.
  RA_INLINE F64x8 to_double8(Key key, int h) {
    const F32x16 v = (F32x16)f32_unkey(key);
    const F32x8 part = h == 0 ? __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
                              : __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    return __builtin_convertvector(part, F64x8);
  }
  RA_INLINE Dbl load_double(const In* p) {
    F32x16 v;
    __builtin_memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(v, F64x16);
  }
};

template <>
struct Lanes<InputKind::kF64> {
  using In = double;
  using Key = I64x8;
  using Dbl = F64x8;
  static constexpr int W = 8;
  static constexpr int64_t kPad = 0x7fffffffffffffffLL;
  RA_INLINE Key load(const In* p) {
    I64x8 bits;
    __builtin_memcpy(&bits, p, sizeof(bits));
    return f64_key(bits);
  }
  RA_INLINE F64x8 to_double8(Key key, int) { return (F64x8)f64_unkey(key); }
  RA_INLINE Dbl load_double(const In* p) {
    F64x8 v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
};

template <>
struct Lanes<InputKind::kF16> {
  using In = uint16_t;
  using Key = I32x16;
  using Dbl = F64x16;
  static constexpr int W = 16;
  static constexpr int32_t kPad = 0x7fffffff;  // above every key, NaN included
  RA_INLINE Key load(const In* p) {
    U16x16 h;
    __builtin_memcpy(&h, p, sizeof(h));
    return f32_key(half_to_f32_bits(__builtin_convertvector(h, I32x16)));
  }
  RA_INLINE F64x8 to_double8(Key key, int h) { return Lanes<InputKind::kF32>::to_double8(key, h); }
  RA_INLINE Dbl load_double(const In* p) {
    U16x16 h;
    __builtin_memcpy(&h, p, sizeof(h));
    return __builtin_convertvector((F32x16)half_to_f32_bits(__builtin_convertvector(h, I32x16)), F64x16);
  }
};

template <>
struct Lanes<InputKind::kBF16> {
  using In = uint16_t;
  using Key = I32x16;
  using Dbl = F64x16;
  static constexpr int W = 16;
  static constexpr int32_t kPad = 0x7fffffff;  // above every key, NaN included
  RA_INLINE Key load(const In* p) {
    U16x16 h;
    __builtin_memcpy(&h, p, sizeof(h));
    return f32_key(__builtin_convertvector(h, I32x16) << 16);
  }
  RA_INLINE F64x8 to_double8(Key key, int h) { return Lanes<InputKind::kF32>::to_double8(key, h); }
  RA_INLINE Dbl load_double(const In* p) {
    U16x16 h;
    __builtin_memcpy(&h, p, sizeof(h));
    return __builtin_convertvector((F32x16)(__builtin_convertvector(h, I32x16) << 16), F64x16);
  }
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

template <typename Key>
RA_INLINE void compare_swap(Key& a, Key& b) {
  const Key lo = a < b ? a : b;
  b = a < b ? b : a;
  a = lo;
}

template <int N, typename Key, int... I>
RA_INLINE void sort_fixed(Key (&k)[N], std::integer_sequence<int, I...>) {
  (compare_swap(k[kStaticNetwork<N>.lo[I]], k[kStaticNetwork<N>.hi[I]]), ...);
}

// Sorts one block's n keys in place. N > 0: the compile-time network on N
// rows (n <= N; rows n..N-1 are padded with a key above NaN), with the block
// in registers. N == 0: the run-time comparator list, in memory.
template <InputKind K, int N>
RA_INLINE void sort_block(const ColumnArgs& a, typename Lanes<K>::Key* keys) {
  using L = Lanes<K>;
  using Key = typename L::Key;
  const int64_t n = a.n;
  if constexpr (N > 0) {
    Key k[N];
    for (int i = 0; i < N; ++i) k[i] = i < n ? keys[i] : Key{} + L::kPad;
    sort_fixed<N>(k, std::make_integer_sequence<int, StaticNetwork<N>::kCount>{});
    for (int i = 0; i < N; ++i)
      if (i < n) keys[i] = k[i];
  } else {
    const int32_t* cmp = a.comparators;
    for (int64_t c = 0; c < a.n_comparators; ++c) compare_swap(keys[cmp[2 * c]], keys[cmp[2 * c + 1]]);
  }
}

// Writes cnt (<= 8) results for the columns starting at j0.
template <InputKind K>
RA_INLINE void store8(const ColumnArgs& a, int64_t j0, int64_t cnt, F64x8 result) {
  if constexpr (K == InputKind::kF32) {
    float* out = static_cast<float*>(a.out) + j0;
    const F32x8 r = __builtin_convertvector(result, F32x8);
    if (cnt == 8) {
      __builtin_memcpy(out, &r, sizeof(r));
    } else {
      for (int64_t l = 0; l < cnt; ++l) out[l] = r[l];
    }
  } else {
    double* out = static_cast<double*>(a.out) + j0;
    if (cnt == 8) {
      __builtin_memcpy(out, &result, sizeof(result));
    } else {
      for (int64_t l = 0; l < cnt; ++l) out[l] = result[l];
    }
  }
}

// The rule's value for lanes 8h .. 8h+7 from one block's sorted keys. Order
// statistics are combined in float64, in ascending order, exactly as the
// CUDA kernel does, so both give the same bits.
template <InputKind K>
RA_INLINE F64x8 rule_of_sorted(const ColumnArgs& a, const typename Lanes<K>::Key* keys, int h) {
  using L = Lanes<K>;
  const int64_t n = a.n;
  const int64_t f = a.f;
  auto value = [keys, h](int64_t t) { return L::to_double8(keys[t], h); };
  const F64x8 lo_mid = value((n - 1) / 2);
  const F64x8 median = (n % 2 == 1) ? lo_mid : (lo_mid + value(n / 2)) * 0.5;
  if (a.rule == 0) return median;
  F64x8 sum = F64x8{};
  if (a.rule == 1) {
    for (int64_t t = f; t < n - f; ++t) sum += value(t);
    return sum / static_cast<double>(n - 2 * f);
  }
  // MeaMed: the n - f values closest to the median form a window
  // [k, k + n - f) of the sorted column; the window slides right past
  // position t (< f) iff the value entering on the right is strictly
  // closer than the one leaving on the left (ties keep the smaller).
  const int64_t w = n - f;
  for (int64_t t = 0; t < f; ++t) {
    const F64x8 left = value(t);
    sum += ((value(t + w) - median) < (median - left)) ? F64x8{} : left;
  }
  for (int64_t t = f; t < w; ++t) sum += value(t);
  for (int64_t t = w; t < n; ++t) {
    const F64x8 right = value(t);
    sum += ((right - median) < (median - value(t - w))) ? right : F64x8{};
  }
  return sum / static_cast<double>(w);
}

template <InputKind K, int N>
void select_columns(const ColumnArgs& a) {
  using L = Lanes<K>;
  using Key = typename L::Key;
  const int64_t n = a.n;
  const auto* x = static_cast<const typename L::In*>(a.x);
  Key* stage = static_cast<Key*>(a.scratch);
  auto load = [](const typename L::In* p) { return L::load(p); };
  const int64_t chunk = a.chunk_blocks * L::W;

  for (int64_t c0 = a.col_begin; c0 < a.col_end; c0 += chunk) {
    const int64_t c1 = (a.col_end - c0) < chunk ? a.col_end : c0 + chunk;
    const int64_t blocks = (c1 - c0 + L::W - 1) / L::W;
    // Stage the chunk as keys, block-major (stage[b * n + i]): each row is
    // read in one contiguous run, and the row's next run is prefetched.
    const int64_t full = (c1 - c0) / L::W;
    for (int64_t i = 0; i < n; ++i) {
      const typename L::In* row = x + i * a.row_stride + c0;
      for (int64_t b = 0; b < full; ++b) {
        stage[b * n + i] = L::load(row + b * L::W);
        __builtin_prefetch(row + b * L::W + chunk);
      }
      if (full < blocks) stage[full * n + i] = load_block<K>(row + full * L::W, c1 - c0 - full * L::W, load);
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = c0 + b * L::W;
      Key* keys = stage + b * n;
      sort_block<K, N>(a, keys);
      for (int h = 0; h * 8 < L::W && j0 + h * 8 < c1; ++h) {
        const int64_t jh = j0 + h * 8;
        store8<K>(a, jh, (c1 - jh) < 8 ? (c1 - jh) : 8, rule_of_sorted<K>(a, keys, h));
      }
    }
  }
}

// sum_i w_i x_i / weight_sum, accumulated in float64 in row order. A chunk of
// kMeanChunkBlocks column blocks is summed at a time, so each row is read in
// contiguous runs (2 KB for float32) while the accumulators stay in L1.
constexpr int64_t kMeanChunkBlocks = 32;

template <InputKind K>
void mean_columns(const ColumnArgs& a) {
  using L = Lanes<K>;
  using Dbl = typename L::Dbl;
  const auto* x = static_cast<const typename L::In*>(a.x);
  auto load = [](const typename L::In* p) { return L::load_double(p); };
  for (int64_t c0 = a.col_begin; c0 < a.col_end; c0 += kMeanChunkBlocks * L::W) {
    const int64_t c1 = (a.col_end - c0) < kMeanChunkBlocks * L::W ? a.col_end : c0 + kMeanChunkBlocks * L::W;
    const int64_t blocks = (c1 - c0 + L::W - 1) / L::W;
    // Full blocks in a branch-free loop; a partial last block separately.
    const int64_t full = (c1 - c0) / L::W;
    Dbl acc[kMeanChunkBlocks] = {};
    for (int64_t i = 0; i < a.n; ++i) {
      const typename L::In* row = x + i * a.row_stride + c0;
      const double wi = a.weights == nullptr ? 1.0 : a.weights[i];
      if (a.weights == nullptr) {
        for (int64_t b = 0; b < full; ++b) acc[b] += L::load_double(row + b * L::W);
      } else {
        for (int64_t b = 0; b < full; ++b) acc[b] += wi * L::load_double(row + b * L::W);
      }
      if (full < blocks) {
        const Dbl v = load_block<K>(row + full * L::W, c1 - c0 - full * L::W, load);
        acc[full] += a.weights == nullptr ? v : wi * v;
      }
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const Dbl mean = acc[b] / a.weight_sum;
      for (int h = 0; h * 8 < L::W && c0 + b * L::W + h * 8 < c1; ++h) {
        const int64_t jh = c0 + b * L::W + h * 8;
        F64x8 part;
        __builtin_memcpy(&part, reinterpret_cast<const double*>(&mean) + h * 8, sizeof(part));
        store8<K>(a, jh, (c1 - jh) < 8 ? (c1 - jh) : 8, part);
      }
    }
  }
}

template <InputKind K>
void run_rule(const ColumnArgs& a) {
  if (a.rule == 3) return mean_columns<K>(a);
  if (a.n <= 8) return select_columns<K, 8>(a);
  if (a.n <= 16) return select_columns<K, 16>(a);
  if (a.n <= 32) return select_columns<K, 32>(a);
  if (a.n <= kMaxFixedRows) return select_columns<K, kMaxFixedRows>(a);
  return select_columns<K, 0>(a);
}

}  // namespace

void ROBUSTAGG_CAT(column_kernel_, ROBUSTAGG_ISA_SUFFIX)(const ColumnArgs& args) {
  switch (args.kind) {
    case InputKind::kF32:
      return run_rule<InputKind::kF32>(args);
    case InputKind::kF64:
      return run_rule<InputKind::kF64>(args);
    case InputKind::kF16:
      return run_rule<InputKind::kF16>(args);
    case InputKind::kBF16:
      return run_rule<InputKind::kBF16>(args);
  }
}

}  // namespace robustagg::cpu
