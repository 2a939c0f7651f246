// Kernel bodies of the distance ops, included once per instruction set by
// distance_isa_*.cpp with ROBUSTAGG_ISA_SUFFIX set. Internal linkage and
// compiler builtins only (see coordinate_kernel.h).
//
// A chunk of columns of every row is staged as float64 in an L2-resident
// buffer (each value converted once), then:
//  * Gram: register tiles of TI x TJ row pairs, one float64 vector of columns
//    per pair, accumulated over the chunk and summed across lanes in a fixed
//    order. Products of float32 values are exact in float64.
//  * mix: per output row, groups of 8 vectors of columns accumulate
//    coef * row over the rows with a non-zero coefficient, in index order.
#include <cstddef>

#include "cpu/distance_kernel.h"
#include "cpu/lanes.h"

#define ROBUSTAGG_CAT2(a, b) a##b
#define ROBUSTAGG_CAT(a, b) ROBUSTAGG_CAT2(a, b)

namespace robustagg::cpu {
namespace {

constexpr int kD = kLanes64;  // doubles per native vector
// Gram register tile: TI x TJ accumulators plus TI + TJ operands must fit the
// register file (32 vector registers with AVX-512, 16 otherwise).
constexpr int kTI = kVecBytes == 64 ? 4 : 2;
constexpr int kTJ = 4;
static_assert(kTileRows % kTI == 0 && kTileRows % kTJ == 0, "tiles must divide the row padding");
// Mix: vectors of columns accumulated at once per output row.
constexpr int kMixVecs = 8;

RA_INLINE int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

RA_INLINE double lane_sum(F64v v) {
  double s = 0.0;
  for (int l = 0; l < kD; ++l) s += v[l];
  return s;
}

RA_INLINE F64v load_vec(const double* p) {
  F64v v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Writes `count` values of one row as float64 to dst; dst[count, padded) = 0.
template <InputKind K>
RA_INLINE void stage_row(const typename Lanes<K>::In* p, int64_t count, int64_t padded, double* dst) {
  using L = Lanes<K>;
  auto convert = [](const typename L::In* q) { return L::load_double(q); };
  int64_t c = 0;
  for (; c + L::W <= count; c += L::W) {
    const auto v = convert(p + c);
    __builtin_memcpy(dst + c, &v, sizeof(v));
  }
  if (c < count) {
    const auto v = load_block<K>(p + c, count - c, convert);
    __builtin_memcpy(dst + c, &v, static_cast<size_t>(count - c) * sizeof(double));
  }
  for (int64_t t = count; t < padded; ++t) dst[t] = 0.0;
}

template <InputKind K>
RA_INLINE const typename Lanes<K>::In* row_ptr(const RowSource& s, int64_t i, int64_t col) {
  using In = typename Lanes<K>::In;
  if (i == s.n) return static_cast<const In*>(s.center) + col;
  return static_cast<const In*>(s.x) + i * s.row_stride + col;
}

RA_INLINE F64v finite_or_zero(F64v v) { return (v - v) == 0.0 ? v : F64v{}; }

template <InputKind K>
void gram_columns(const RowSource& s, double* gram) {
  const int64_t m = s.n + (s.center != nullptr ? 1 : 0);
  const int64_t mp = round_up(m, kTileRows);
  double* buf = s.scratch;
  double* shift = s.scratch + mp * s.chunk;
  const int64_t h = (s.n - 1) / 2;
  for (int64_t c0 = s.col_begin; c0 < s.col_end; c0 += s.chunk) {
    const int64_t count = s.col_end - c0 < s.chunk ? s.col_end - c0 : s.chunk;
    const int64_t padded = round_up(count, kD);
    const int64_t vecs = padded / kD;
    for (int64_t i = 0; i < m; ++i) stage_row<K>(row_ptr<K>(s, i, c0), count, padded, buf + i * s.chunk);
    for (int64_t i = m; i < mp; ++i)
      for (int64_t t = 0; t < padded; ++t) buf[i * s.chunk + t] = 0.0;
    // Shift r: median of rows 0, (n-1)/2, n-1 with non-finite values read as 0.
    for (int64_t v = 0; v < vecs; ++v) {
      const F64v a = finite_or_zero(load_vec(buf + v * kD));
      const F64v b = finite_or_zero(load_vec(buf + h * s.chunk + v * kD));
      const F64v e = finite_or_zero(load_vec(buf + (s.n - 1) * s.chunk + v * kD));
      const F64v lo = a < b ? a : b;
      const F64v hi = a < b ? b : a;
      const F64v hi_e = hi < e ? hi : e;
      const F64v r = lo < hi_e ? hi_e : lo;
      __builtin_memcpy(shift + v * kD, &r, sizeof(r));
    }
    for (int64_t i = 0; i < m; ++i) {
      double* row = buf + i * s.chunk;
      for (int64_t v = 0; v < vecs; ++v) {
        const F64v p = load_vec(row + v * kD) - load_vec(shift + v * kD);
        __builtin_memcpy(row + v * kD, &p, sizeof(p));
      }
    }
    // While the tiles compute, prefetch the next chunk's rows a few cache
    // lines per tile, so that memory and arithmetic overlap.
    const int64_t next = c0 + s.chunk;
    const int64_t next_count = s.col_end - next < s.chunk ? s.col_end - next : s.chunk;
    const int64_t lines_per_row = next_count > 0 ? (next_count * static_cast<int64_t>(sizeof(typename Lanes<K>::In)) + 63) / 64 : 0;
    const int64_t lines = lines_per_row * m;
    const int64_t tiles = (mp / kTI) * (mp / kTJ + 1) / 2 + 1;
    const int64_t per_tile = (lines + tiles - 1) / tiles;
    int64_t line = 0;
    for (int64_t i0 = 0; i0 < m; i0 += kTI) {
      for (int64_t j0 = i0 / kTJ * kTJ; j0 < m; j0 += kTJ) {
        for (int64_t e = 0; e < per_tile && line < lines; ++e, ++line) {
          const char* p = reinterpret_cast<const char*>(row_ptr<K>(s, line / lines_per_row, next));
          __builtin_prefetch(p + (line % lines_per_row) * 64, 0, 3);
        }
        F64v acc[kTI][kTJ] = {};
        const double* a = buf + i0 * s.chunk;
        const double* b = buf + j0 * s.chunk;
        for (int64_t v = 0; v < vecs; ++v) {
          F64v av[kTI], bv[kTJ];
#pragma GCC unroll 4
          for (int ii = 0; ii < kTI; ++ii) av[ii] = load_vec(a + ii * s.chunk + v * kD);
#pragma GCC unroll 4
          for (int jj = 0; jj < kTJ; ++jj) bv[jj] = load_vec(b + jj * s.chunk + v * kD);
#pragma GCC unroll 4
          for (int ii = 0; ii < kTI; ++ii)
#pragma GCC unroll 4
            for (int jj = 0; jj < kTJ; ++jj) acc[ii][jj] += av[ii] * bv[jj];
        }
        for (int ii = 0; ii < kTI; ++ii)
          for (int jj = 0; jj < kTJ; ++jj) {
            const int64_t i = i0 + ii;
            const int64_t j = j0 + jj;
            if (i <= j && j < m) gram[i * m + j] += lane_sum(acc[ii][jj]);
          }
      }
    }
  }
}

// The value of a product, materialised so that it cannot be fused into the
// following addition (this file is compiled with fp-contract=fast).
RA_INLINE F64v unfused(F64v v) {
  asm("" : "+v"(v));
  return v;
}

// acc += coef * one group of a row's columns, converted from X on the fly
// (columns past `count` read as 0).
template <InputKind K>
RA_INLINE void add_direct(F64v (&acc)[kMixVecs], double coef, const typename Lanes<K>::In* p, int64_t count) {
  using L = Lanes<K>;
  using Dbl = typename L::Dbl;
  constexpr int kParts = sizeof(Dbl) / sizeof(F64v);  // float64 vectors per block of W columns
  auto convert = [](const typename L::In* q) { return L::load_double(q); };
#pragma GCC unroll 8
  for (int b = 0; b < kMixVecs / kParts; ++b) {
    const int64_t c = b * L::W;
    Dbl v{};
    if (c + L::W <= count) {
      v = convert(p + c);
    } else if (c < count) {
      v = load_block<K>(p + c, count - c, convert);
    }
    F64v parts[kParts];
    __builtin_memcpy(parts, &v, sizeof(v));
#pragma GCC unroll 2
    for (int h = 0; h < kParts; ++h) acc[b * kParts + h] += unfused(coef * parts[h]);
  }
}

// The products are kept out of fused multiply-add (unfused), as in the CUDA
// kernel: the same bits on every instruction set and on both devices.
template <InputKind K>
void mix_columns(const RowSource& s, const MixTarget& t) {
  const int64_t m = s.n + (s.center != nullptr ? 1 : 0);
  double* buf = s.scratch;
  constexpr int64_t kGroup = kMixVecs * kD;  // columns of one group; divides s.chunk
  for (int64_t c0 = s.col_begin; c0 < s.col_end; c0 += s.chunk) {
    const int64_t count = s.col_end - c0 < s.chunk ? s.col_end - c0 : s.chunk;
    const int64_t padded = round_up(count, kGroup);  // zero columns complete the last group
    // Rows that several outputs read are converted once per chunk; a row read
    // once goes straight from X into the accumulators.
    for (int64_t i = 0; i < m; ++i)
      if (t.uses[i] > 1) stage_row<K>(row_ptr<K>(s, i, c0), count, padded, buf + i * s.chunk);
    for (int64_t g = 0; g < padded; g += kGroup) {
      const int64_t group_count = count - g < kGroup ? count - g : kGroup;
      for (int64_t r = 0; r < t.k; ++r) {
        F64v acc[kMixVecs];
#pragma GCC unroll 8
        for (int q = 0; q < kMixVecs; ++q) acc[q] = -F64v{};  // -0.0, the additive identity: a lone term keeps its sign of zero
        for (int64_t p = t.begin[r]; p < t.begin[r + 1]; ++p) {
          const double coef = t.value[p];
          const int64_t i = t.index[p];
          if (t.uses[i] == 1) {
            add_direct<K>(acc, coef, row_ptr<K>(s, i, c0 + g), group_count);
            continue;
          }
          const double* row = buf + i * s.chunk + g;
#pragma GCC unroll 8
          for (int q = 0; q < kMixVecs; ++q) acc[q] += unfused(coef * load_vec(row + q * kD));
        }
        for (int q = 0; q < kMixVecs && q * kD < group_count; ++q) {
          const int64_t col = c0 + g + q * kD;
          const int64_t cnt = group_count - q * kD < kD ? group_count - q * kD : kD;
          // Whole vectors with a fixed-size copy (a single store), the tail by length.
          if constexpr (K == InputKind::kF32) {
            const F32h f = __builtin_convertvector(acc[q], F32h);
            float* dst = static_cast<float*>(t.out) + r * t.out_stride + col;
            if (cnt == kD) {
              __builtin_memcpy(dst, &f, sizeof(f));
            } else {
              __builtin_memcpy(dst, &f, static_cast<size_t>(cnt) * sizeof(float));
            }
          } else {
            double* dst = static_cast<double*>(t.out) + r * t.out_stride + col;
            if (cnt == kD) {
              __builtin_memcpy(dst, &acc[q], sizeof(F64v));
            } else {
              __builtin_memcpy(dst, &acc[q], static_cast<size_t>(cnt) * sizeof(double));
            }
          }
        }
      }
    }
  }
}

template <InputKind K>
void norms_columns(const RowSource& s, double* norms) {
  using L = Lanes<K>;
  using Dbl = typename L::Dbl;
  auto convert = [](const typename L::In* q) { return L::load_double(q); };
  const int64_t count = s.col_end - s.col_begin;
  for (int64_t i = 0; i < s.n; ++i) {
    const typename L::In* p = row_ptr<K>(s, i, s.col_begin);
    Dbl acc{};
    int64_t c = 0;
    for (; c + L::W <= count; c += L::W) {
      const Dbl v = convert(p + c);
      acc += v * v;
    }
    double lanes[L::W];
    __builtin_memcpy(lanes, &acc, sizeof(acc));
    double sum = 0.0;
    for (int l = 0; l < L::W; ++l) sum += lanes[l];
    if (c < count) {
      const Dbl v = load_block<K>(p + c, count - c, convert);
      __builtin_memcpy(lanes, &v, sizeof(v));
      for (int64_t l = 0; l < count - c; ++l) sum += lanes[l] * lanes[l];
    }
    norms[i] += sum;
  }
}

}  // namespace

#define ROBUSTAGG_BY_KIND(body, kind, ...)          \
  switch (kind) {                                   \
    case InputKind::kF32:                           \
      return body<InputKind::kF32>(__VA_ARGS__);    \
    case InputKind::kF64:                           \
      return body<InputKind::kF64>(__VA_ARGS__);    \
    case InputKind::kF16:                           \
      return body<InputKind::kF16>(__VA_ARGS__);    \
    case InputKind::kBF16:                          \
      return body<InputKind::kBF16>(__VA_ARGS__);   \
  }

void ROBUSTAGG_CAT(gram_kernel_, ROBUSTAGG_ISA_SUFFIX)(const RowSource& src, double* gram) {
  ROBUSTAGG_BY_KIND(gram_columns, src.kind, src, gram)
}

void ROBUSTAGG_CAT(mix_kernel_, ROBUSTAGG_ISA_SUFFIX)(const RowSource& src, const MixTarget& target) {
  ROBUSTAGG_BY_KIND(mix_columns, src.kind, src, target)
}

void ROBUSTAGG_CAT(norms_kernel_, ROBUSTAGG_ISA_SUFFIX)(const RowSource& src, double* norms) {
  ROBUSTAGG_BY_KIND(norms_columns, src.kind, src, norms)
}

}  // namespace robustagg::cpu
