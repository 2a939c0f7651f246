// Kernel bodies of the distance ops, included once per instruction set by
// distance_isa_*.cpp with ROBUSTAGG_ISA_SUFFIX set. Internal linkage and
// compiler builtins only (see coordinate_kernel.h).
//
//  * Gram: a chunk of columns of every row is staged, shifted, as float64 in
//    an L2-resident buffer (each value converted once). Rows go in blocks of
//    4: the 10 pairs inside a block, then register tiles of kTI x 4 pairs
//    against every later block; one float64 vector of columns per pair,
//    accumulated over the chunk and summed across lanes in a fixed order.
//    Products of float32 values are exact in float64.
//  * norms: per row, four vectors of columns accumulate the squares in turn,
//    added pairwise at the end of the block, then across lanes in order.
//  * mix: per output row, groups of 8 vectors of columns accumulate
//    coef * row over the rows with a non-zero coefficient, in index order.
#include <cstddef>

#include "cpu/distance_kernel.h"
#include "cpu/simd_vectors.h"

#define ROBUSTAGG_CAT2(a, b) a##b
#define ROBUSTAGG_CAT(a, b) ROBUSTAGG_CAT2(a, b)

namespace robustagg::cpu {
namespace {

constexpr int kD = kLanes64;  // doubles per native vector
// Gram register tile: kTI x kTileRows accumulators plus kTI + kTileRows
// operands must fit the register file (32 vector registers with AVX-512, 16
// otherwise).
constexpr int kTI = kVecBytes == 64 ? 4 : 2;
static_assert(kTileRows == 4 && kTileRows % kTI == 0, "the triangle kernel is written for blocks of 4 rows");
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

// Median of three per lane, non-finite values read as 0: the shift r.
RA_INLINE F64v shift_of(F64v a, F64v b, F64v e) {
  a = finite_or_zero(a);
  b = finite_or_zero(b);
  e = finite_or_zero(e);
  const F64v lo = a < b ? a : b;
  const F64v hi = a < b ? b : a;
  const F64v hi_e = hi < e ? hi : e;
  return lo < hi_e ? hi_e : lo;
}

// Walks the cache lines of the next chunk of every row, one line per step,
// so that the reads of the next chunk overlap the arithmetic on this one.
template <InputKind K>
struct Prefetcher {
  const RowSource& s;
  int64_t col;        // first column of the next chunk
  int64_t row_bytes;  // bytes of one row in the next chunk (0: no next chunk)
  int64_t rows;
  int64_t row = 0;
  int64_t offset = 0;
  inline __attribute__((always_inline)) void step() {
    if (row >= rows) return;
    __builtin_prefetch(reinterpret_cast<const char*>(row_ptr<K>(s, row, col)) + offset, 0, 3);
    offset += 64;
    if (offset >= row_bytes) {
      offset = 0;
      ++row;
    }
  }
};

// Adds the lane sums of acc[ii][jj] (rows a0 + ii, b0 + jj) into the upper
// triangle of gram.
template <int TI, int TJ>
RA_INLINE void flush(const F64v (&acc)[TI][TJ], int64_t a0, int64_t b0, int64_t m, double* gram) {
  for (int ii = 0; ii < TI; ++ii)
    for (int jj = 0; jj < TJ; ++jj) {
      const int64_t i = a0 + ii;
      const int64_t j = b0 + jj;
      if (i <= j && j < m) gram[i * m + j] += lane_sum(acc[ii][jj]);
    }
}

// Rows a..a+TI-1 against rows b..b+kTileRows-1 of the staged chunk.
template <int TI, typename Prefetch>
RA_INLINE void gram_tile(const double* a, const double* b, int64_t stride, int64_t vecs, F64v (&acc)[TI][kTileRows],
                         Prefetch& prefetch) {
  for (int64_t v = 0; v < vecs; ++v) {
    prefetch.step();
    F64v av[TI], bv[kTileRows];
#pragma GCC unroll 4
    for (int ii = 0; ii < TI; ++ii) av[ii] = load_vec(a + ii * stride + v * kD);
#pragma GCC unroll 4
    for (int jj = 0; jj < kTileRows; ++jj) bv[jj] = load_vec(b + jj * stride + v * kD);
#pragma GCC unroll 4
    for (int ii = 0; ii < TI; ++ii)
#pragma GCC unroll 4
      for (int jj = 0; jj < kTileRows; ++jj) acc[ii][jj] += av[ii] * bv[jj];
  }
}

// The 10 pairs i <= j of one block of kTileRows rows.
template <typename Prefetch>
RA_INLINE void gram_triangle(const double* a, int64_t stride, int64_t vecs, F64v (&acc)[10], Prefetch& prefetch) {
  for (int64_t v = 0; v < vecs; ++v) {
    prefetch.step();
    const F64v x0 = load_vec(a + v * kD);
    const F64v x1 = load_vec(a + stride + v * kD);
    const F64v x2 = load_vec(a + 2 * stride + v * kD);
    const F64v x3 = load_vec(a + 3 * stride + v * kD);
    acc[0] += x0 * x0;
    acc[1] += x0 * x1;
    acc[2] += x0 * x2;
    acc[3] += x0 * x3;
    acc[4] += x1 * x1;
    acc[5] += x1 * x2;
    acc[6] += x1 * x3;
    acc[7] += x2 * x2;
    acc[8] += x2 * x3;
    acc[9] += x3 * x3;
  }
}

// Writes the shifted values of one row: stage_row, minus the shift.
template <InputKind K>
RA_INLINE void stage_shifted(const typename Lanes<K>::In* p, int64_t count, int64_t padded, const double* shift,
                             double* dst) {
  using L = Lanes<K>;
  using Dbl = typename L::Dbl;
  auto convert = [](const typename L::In* q) { return L::load_double(q); };
  int64_t c = 0;
  for (; c + L::W <= count; c += L::W) {
    Dbl r;
    __builtin_memcpy(&r, shift + c, sizeof(r));
    const Dbl v = convert(p + c) - r;
    __builtin_memcpy(dst + c, &v, sizeof(v));
  }
  if (c < count) {
    const auto v = load_block<K>(p + c, count - c, convert);
    __builtin_memcpy(dst + c, &v, static_cast<size_t>(count - c) * sizeof(double));
    for (int64_t t = c; t < count; ++t) dst[t] -= shift[t];
  }
  for (int64_t t = count; t < padded; ++t) dst[t] = 0.0;
}

template <InputKind K>
void gram_columns(const RowSource& s, double* gram) {
  const int64_t m = s.n + (s.center != nullptr ? 1 : 0);
  const int64_t mp = round_up(m, kTileRows);
  double* buf = s.scratch;
  double* shift = s.scratch + mp * s.chunk;
  const int64_t source[3] = {0, (s.n - 1) / 2, s.n - 1};  // the rows the shift is the median of
  for (int64_t c0 = s.col_begin; c0 < s.col_end; c0 += s.chunk) {
    const int64_t count = s.col_end - c0 < s.chunk ? s.col_end - c0 : s.chunk;
    const int64_t padded = round_up(count, kD);
    const int64_t vecs = padded / kD;
    // The three source rows raw, the shift from them, then every row shifted as it is staged.
    for (int k = 0; k < 3; ++k) stage_row<K>(row_ptr<K>(s, source[k], c0), count, padded, buf + k * s.chunk);
    for (int64_t v = 0; v < vecs; ++v) {
      const F64v r =
          shift_of(load_vec(buf + v * kD), load_vec(buf + s.chunk + v * kD), load_vec(buf + 2 * s.chunk + v * kD));
      __builtin_memcpy(shift + v * kD, &r, sizeof(r));
    }
    for (int64_t i = 0; i < m; ++i) stage_shifted<K>(row_ptr<K>(s, i, c0), count, padded, shift, buf + i * s.chunk);
    for (int64_t i = m; i < mp; ++i)
      for (int64_t t = 0; t < padded; ++t) buf[i * s.chunk + t] = 0.0;

    const int64_t next = c0 + s.chunk;
    const int64_t next_count = s.col_end - next < s.chunk ? s.col_end - next : s.chunk;
    Prefetcher<K> prefetch{s, next,
                           next_count > 0 ? next_count * static_cast<int64_t>(sizeof(typename Lanes<K>::In)) : 0,
                           next_count > 0 ? m : 0};
    // Blocks of kTileRows rows: the triangle of each diagonal block (10
    // pairs), then its pairs with every later block, kTI rows at a time.
    for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
      const double* a = buf + i0 * s.chunk;
      F64v tri[10] = {};
      gram_triangle(a, s.chunk, vecs, tri, prefetch);
      int t = 0;
      for (int ii = 0; ii < kTileRows; ++ii)
        for (int jj = ii; jj < kTileRows; ++jj, ++t)
          if (i0 + jj < m) gram[(i0 + ii) * m + i0 + jj] += lane_sum(tri[t]);
      for (int64_t j0 = i0 + kTileRows; j0 < m; j0 += kTileRows) {
        for (int64_t h = 0; h < kTileRows; h += kTI) {
          F64v acc[kTI][kTileRows] = {};
          gram_tile<kTI>(a + h * s.chunk, buf + j0 * s.chunk, s.chunk, vecs, acc, prefetch);
          flush(acc, i0 + h, j0, m, gram);
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
        for (int q = 0; q < kMixVecs; ++q)
          acc[q] = -F64v{};  // -0.0, the additive identity: a lone term keeps its sign of zero
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
    // Four independent accumulators: one would chain every multiply-add on the previous one's latency.
    Dbl acc0{}, acc1{}, acc2{}, acc3{};
    int64_t c = 0;
    for (; c + 4 * L::W <= count; c += 4 * L::W) {
      const Dbl v0 = convert(p + c);
      const Dbl v1 = convert(p + c + L::W);
      const Dbl v2 = convert(p + c + 2 * L::W);
      const Dbl v3 = convert(p + c + 3 * L::W);
      acc0 += v0 * v0;
      acc1 += v1 * v1;
      acc2 += v2 * v2;
      acc3 += v3 * v3;
    }
    for (; c + L::W <= count; c += L::W) {
      const Dbl v = convert(p + c);
      acc0 += v * v;
    }
    const Dbl acc = (acc0 + acc1) + (acc2 + acc3);
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

#define ROBUSTAGG_BY_KIND(body, kind, ...)        \
  switch (kind) {                                 \
    case InputKind::kF32:                         \
      return body<InputKind::kF32>(__VA_ARGS__);  \
    case InputKind::kF64:                         \
      return body<InputKind::kF64>(__VA_ARGS__);  \
    case InputKind::kF16:                         \
      return body<InputKind::kF16>(__VA_ARGS__);  \
    case InputKind::kBF16:                        \
      return body<InputKind::kBF16>(__VA_ARGS__); \
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
