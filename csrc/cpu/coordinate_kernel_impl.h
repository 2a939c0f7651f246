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

#include "column_rule.h"
#include "cpu/coordinate_kernel.h"
#include "cpu/simd_vectors.h"
#include "meamed_window.h"
#include "sorting_network.h"

#define ROBUSTAGG_CAT2(a, b) a##b
#define ROBUSTAGG_CAT(a, b) ROBUSTAGG_CAT2(a, b)

namespace robustagg::cpu {
namespace {

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

// Writes cnt (<= kLanes64) results for the columns starting at j0.
template <InputKind K>
RA_INLINE void store_part(const ColumnArgs& a, int64_t j0, int64_t cnt, F64v result) {
  if constexpr (K == InputKind::kF32) {
    float* out = static_cast<float*>(a.out) + j0;
    const F32h r = __builtin_convertvector(result, F32h);
    if (cnt == kLanes64) {
      __builtin_memcpy(out, &r, sizeof(r));
    } else {
      for (int64_t l = 0; l < cnt; ++l) out[l] = r[l];
    }
  } else {
    double* out = static_cast<double*>(a.out) + j0;
    if (cnt == kLanes64) {
      __builtin_memcpy(out, &result, sizeof(result));
    } else {
      for (int64_t l = 0; l < cnt; ++l) out[l] = result[l];
    }
  }
}

// The rule's value for each lane from one block's sorted keys. Order
// statistics are combined in float64, in ascending order, exactly as the CUDA
// kernel does, so both give the same bits (meamed_window.h). Each sorted
// position is converted to float64 once.

// MeaMed's narrow window (meamed_window.h): its start per lane, then the
// sorted positions inside it added in ascending order.
template <typename L, int P>
RA_INLINE Wide<P> mean_of_window(const ColumnArgs& a, const typename L::Key* keys, const Wide<P>& median, int64_t w) {
  using V = Wide<P>;
  V start{};
  for (int64_t t = 0; t < a.f; ++t) {
    const V left = L::to_double(keys[t]);
    const V right = L::to_double(keys[t + w]);
    for (int h = 0; h < P; ++h) {
      const auto slide = closer<true>(right.part[h], median.part[h], left.part[h]);
      start.part[h] = slide ? F64v{} + static_cast<double>(t + 1) : start.part[h];
    }
  }
  V sum{};
  for (int64_t t = 0; t < a.n; ++t) {
    const V v = L::to_double(keys[t]);
    const F64v pos = F64v{} + static_cast<double>(t);
    for (int h = 0; h < P; ++h) {
      const auto inside = (start.part[h] <= pos) & (pos < start.part[h] + static_cast<double>(w));
      sum.part[h] += inside ? v.part[h] : F64v{};
    }
  }
  for (int h = 0; h < P; ++h) sum.part[h] /= static_cast<double>(w);
  return sum;
}

template <InputKind K>
RA_INLINE Wide<Lanes<K>::kParts> rule_of_sorted(const ColumnArgs& a, const typename Lanes<K>::Key* keys) {
  using L = Lanes<K>;
  constexpr int P = L::kParts;
  using V = Wide<P>;
  const int64_t n = a.n;
  const int64_t f = a.f;
  const V lo_mid = L::to_double(keys[(n - 1) / 2]);
  V median = lo_mid;
  if (n % 2 == 0) {
    const V hi_mid = L::to_double(keys[n / 2]);
    for (int h = 0; h < P; ++h) median.part[h] = midpoint(lo_mid.part[h], hi_mid.part[h]);
  }
  if (a.rule == ColumnRule::kMedian) return median;
  V sum{};
  auto add = [&sum](const V& v) {
    for (int h = 0; h < P; ++h) sum.part[h] += v.part[h];
  };
  auto divide = [&sum](int64_t count) {
    for (int h = 0; h < P; ++h) sum.part[h] /= static_cast<double>(count);
    return sum;
  };
  if (a.rule == ColumnRule::kTrimmedMean) {
    for (int64_t t = f; t < n - f; ++t) add(L::to_double(keys[t]));
    return divide(n - 2 * f);
  }
  // MeaMed: the window of w = n - f sorted positions (meamed_window.h).
  const int64_t w = n - f;
  if (meamed_window_is_narrow(n, f)) return mean_of_window<L>(a, keys, median, w);
  // Up to kKeptPairs pairs, the right-hand contribution decided in the first
  // loop is kept for the last one.
  constexpr int64_t kKeptPairs = 32;
  V right_part[kKeptPairs];
  auto decide = [&](int64_t t, V& left_in, V& right_in) {
    const V left = L::to_double(keys[t]);
    const V right = L::to_double(keys[t + w]);
    for (int h = 0; h < P; ++h) {
      const auto slide = closer<false>(right.part[h], median.part[h], left.part[h]);
      left_in.part[h] = slide ? F64v{} : left.part[h];
      right_in.part[h] = slide ? right.part[h] : F64v{};
    }
  };
  for (int64_t t = 0; t < f; ++t) {
    V left_in, right_in;
    decide(t, left_in, right_in);
    add(left_in);
    if (t < kKeptPairs) right_part[t] = right_in;
  }
  for (int64_t t = f; t < w; ++t) add(L::to_double(keys[t]));
  for (int64_t t = w; t < n; ++t) {
    if (t - w < kKeptPairs) {
      add(right_part[t - w]);
    } else {
      V left_in, right_in;
      decide(t - w, left_in, right_in);
      add(right_in);
    }
  }
  return divide(w);
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
      const auto result = rule_of_sorted<K>(a, keys);
      for (int h = 0; h < L::kParts && j0 + h * kLanes64 < c1; ++h) {
        const int64_t jh = j0 + h * kLanes64;
        store_part<K>(a, jh, (c1 - jh) < kLanes64 ? (c1 - jh) : kLanes64, result.part[h]);
      }
    }
  }
}

// sum_i w_i x_i / weight_sum, accumulated in float64 in row order. A chunk of
// kMeanChunkBlocks column blocks is summed at a time, so each row is read in
// contiguous runs (2 KB of float32 with AVX-512) while the accumulators stay
// in L1.
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
      for (int h = 0; h < L::kParts && c0 + b * L::W + h * kLanes64 < c1; ++h) {
        const int64_t jh = c0 + b * L::W + h * kLanes64;
        F64v part;
        __builtin_memcpy(&part, reinterpret_cast<const double*>(&mean) + h * kLanes64, sizeof(part));
        store_part<K>(a, jh, (c1 - jh) < kLanes64 ? (c1 - jh) : kLanes64, part);
      }
    }
  }
}

template <InputKind K>
void run_rule(const ColumnArgs& a) {
  if (a.rule == ColumnRule::kMean) return mean_columns<K>(a);
  if (a.n <= 8) return select_columns<K, 8>(a);
  if (a.n <= 16) return select_columns<K, 16>(a);
  if (a.n <= 32) return select_columns<K, 32>(a);
  if (a.n <= kCpuMaxFixedRows) return select_columns<K, kCpuMaxFixedRows>(a);
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
