// Kernel bodies of the distance ops, included once per instruction set by
// distance_isa_*.cpp with ROBUSTAGG_ISA_SUFFIX set. Internal linkage and
// compiler builtins only (see coordinate_kernel.h).
//
//  * Gram: a chunk of columns of every row is staged, shifted, as float64 in
//    an L2-resident buffer (each value converted once); with 256- or 512-bit
//    vectors, float32 and float64 input of at most kDirectMaxRows rows skips
//    the buffer and is converted and shifted as the tiles read it (the same
//    values). Rows go in blocks of 4 (the last may hold fewer): the pairs
//    inside a block, then register tiles of kTI x 4 pairs against every later
//    block; one float64 vector of columns per pair, accumulated over the
//    chunk and summed across lanes in a fixed order.
//    Products of float32 values are exact in float64.
//  * norms: per row, four vectors of columns accumulate the squares in turn,
//    added pairwise at the end of the block, then across lanes in order; the
//    products with a vector v, when asked for, likewise beside them, and the
//    squared distances to v the same way.
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

// kD float32 or float64 values from p as one float64 vector, loaded at that
// width: no wider vector to split (GCC splits one through the stack on AVX2).
template <InputKind K>
RA_INLINE F64v widen_vec(const typename Lanes<K>::In* p) {
  static_assert(K == InputKind::kF32 || K == InputKind::kF64, "widen_vec reads float32 or float64");
  if constexpr (K == InputKind::kF32) {
    F32h h;
    __builtin_memcpy(&h, p, sizeof(h));
    return f32_to_f64(h);
  } else {
    return load_vec(p);
  }
}

// The float64 values of the min(W, count) columns from p as native parts;
// lanes past count are 0.
template <InputKind K>
RA_INLINE Wide<Lanes<K>::kParts> load_parts(const typename Lanes<K>::In* p, int64_t count) {
  using L = Lanes<K>;
  if (count >= L::W) return L::load_parts(p);
  typename L::In tail[L::W] = {};
  for (int64_t l = 0; l < count; ++l) tail[l] = p[l];
  return L::load_parts(tail);
}

// Writes `count` values of one row, minus shift[c] when a shift is given, as
// float64 to dst; dst[count, padded) = 0. padded: a multiple of W.
template <InputKind K>
RA_INLINE void stage_row(const typename Lanes<K>::In* p, int64_t count, int64_t padded, double* dst,
                         const double* shift = nullptr) {
  using L = Lanes<K>;
  int64_t c = 0;
  for (; c < count; c += L::W) {
    const auto x = load_parts<K>(p + c, count - c);
#pragma GCC unroll 2
    for (int h = 0; h < L::kParts; ++h) {
      F64v v = x.part[h];
      if (shift != nullptr) v -= load_vec(shift + c + h * kD);  // 0 - 0 past count: the shift's lanes are 0 there
      __builtin_memcpy(dst + c + h * kD, &v, sizeof(v));
    }
  }
  for (; c < padded; ++c) dst[c] = 0.0;
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

// The rows of one chunk as the tiles read them, vector v (kD columns) at a
// time, shifted: `row(i)` is row i's first column in the chunk and
// `at<tail>(p, v, shift_at(v))` its float64 vector v. `whole` vectors need no
// bounds check; the tiles read those with tail = false, the rest with true.

// Rows staged as shifted float64 in the scratch buffer (zero-padded).
struct StagedRows {
  using P = const double*;
  const double* buf;
  int64_t stride;
  int64_t whole;
  inline __attribute__((always_inline)) P row(int64_t i) const { return buf + i * stride; }
  inline __attribute__((always_inline)) F64v shift_at(int64_t) const { return F64v{}; }
  template <bool kTail>
  inline __attribute__((always_inline)) F64v at(P p, int64_t v, F64v) const {
    return load_vec(p + v * kD);
  }
};

// Rows read straight from X (float32 or float64), converted and shifted at
// each use. For a few rows (each read by a few tiles) this costs less than
// staging: no store and reload of every value, and the conversions run beside
// the multiply-adds. The same values as staged, so the same sums.
template <InputKind K>
struct DirectRows {
  static_assert(K == InputKind::kF32 || K == InputKind::kF64, "direct rows widen float32 or float64");
  using In = typename Lanes<K>::In;
  using P = const In*;
  const RowSource& s;
  int64_t c0;
  const double* shift;
  int64_t count;
  int64_t whole;
  inline __attribute__((always_inline)) P row(int64_t i) const { return row_ptr<K>(s, i, c0); }
  inline __attribute__((always_inline)) F64v shift_at(int64_t v) const { return load_vec(shift + v * kD); }
  template <bool kTail>
  inline __attribute__((always_inline)) F64v at(P p, int64_t v, F64v sv) const {
    if constexpr (!kTail) {
      return widen_vec<K>(p + v * kD) - sv;
    } else {
      In tail[kD] = {};  // columns past count read as 0 (and their shift is 0)
      for (int64_t l = 0; l < kD && v * kD + l < count; ++l) tail[l] = p[v * kD + l];
      return widen_vec<K>(tail) - sv;
    }
  }
};

// Rows pa[] against rows pb[] of the chunk, vectors [v0, v1).
template <bool kTail, int TI, int TJ, typename R, typename Prefetch>
RA_INLINE void gram_tile_range(const R& rows, const typename R::P (&pa)[TI], const typename R::P (&pb)[TJ], int64_t v0,
                               int64_t v1, F64v (&acc)[TI][TJ], Prefetch& prefetch) {
  for (int64_t v = v0; v < v1; ++v) {
    prefetch.step();
    const F64v sv = rows.shift_at(v);
    F64v av[TI], bv[TJ];
#pragma GCC unroll 4
    for (int ii = 0; ii < TI; ++ii) av[ii] = rows.template at<kTail>(pa[ii], v, sv);
#pragma GCC unroll 4
    for (int jj = 0; jj < TJ; ++jj) bv[jj] = rows.template at<kTail>(pb[jj], v, sv);
#pragma GCC unroll 4
    for (int ii = 0; ii < TI; ++ii)
#pragma GCC unroll 4
      for (int jj = 0; jj < TJ; ++jj) acc[ii][jj] += av[ii] * bv[jj];
  }
}

// The kTileRows rows from a0 against the TJ rows from b0, TI rows at a time:
// kTI, or all four against at most two (8 accumulators fit either way).
template <int TJ, typename R, typename Prefetch>
RA_INLINE void gram_block_pair(const R& rows, int64_t vecs, int64_t a0, int64_t b0, int64_t m, double* gram,
                               Prefetch& prefetch) {
  constexpr int TI = TJ <= 2 ? kTileRows : kTI;
  typename R::P pb[TJ];
  for (int jj = 0; jj < TJ; ++jj) pb[jj] = rows.row(b0 + jj);
  for (int64_t h = 0; h < kTileRows; h += TI) {
    typename R::P pa[TI];
    for (int ii = 0; ii < TI; ++ii) pa[ii] = rows.row(a0 + h + ii);
    F64v acc[TI][TJ] = {};
    gram_tile_range<false>(rows, pa, pb, 0, rows.whole, acc, prefetch);
    gram_tile_range<true>(rows, pa, pb, rows.whole, vecs, acc, prefetch);
    flush(acc, a0 + h, b0, m, gram);
  }
}

// Vectors [v0, v1) of the R (R + 1) / 2 pairs i <= j of the rows p[].
template <bool kTail, int R, typename Rows, typename Prefetch>
RA_INLINE void gram_triangle_range(const Rows& rows, const typename Rows::P (&p)[R], int64_t v0, int64_t v1,
                                   F64v (&acc)[R * (R + 1) / 2], Prefetch& prefetch) {
  for (int64_t v = v0; v < v1; ++v) {
    prefetch.step();
    const F64v sv = rows.shift_at(v);
    F64v x[R];
#pragma GCC unroll 4
    for (int ii = 0; ii < R; ++ii) x[ii] = rows.template at<kTail>(p[ii], v, sv);
#pragma GCC unroll 4
    for (int ii = 0; ii < R; ++ii)
#pragma GCC unroll 4
      for (int jj = ii; jj < R; ++jj) acc[ii * R - ii * (ii - 1) / 2 + jj - ii] += x[ii] * x[jj];
  }
}

// The R (R + 1) / 2 pairs i <= j of the R rows from a0.
template <int R, typename Rows, typename Prefetch>
RA_INLINE void gram_triangle(const Rows& rows, int64_t vecs, int64_t a0, int64_t m, double* gram, Prefetch& prefetch) {
  typename Rows::P p[R];
  for (int ii = 0; ii < R; ++ii) p[ii] = rows.row(a0 + ii);
  F64v acc[R * (R + 1) / 2] = {};
  gram_triangle_range<false>(rows, p, 0, rows.whole, acc, prefetch);
  gram_triangle_range<true>(rows, p, rows.whole, vecs, acc, prefetch);
  int t = 0;
  for (int ii = 0; ii < R; ++ii)
    for (int jj = ii; jj < R; ++jj, ++t) gram[(a0 + ii) * m + a0 + jj] += lane_sum(acc[t]);
}

// Blocks of kTileRows rows (the last may have fewer): the triangle of each
// diagonal block, then its pairs with every later block.
template <typename R, typename Prefetch>
void gram_tiles(const R& rows, int64_t vecs, int64_t m, double* gram, Prefetch& prefetch) {
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    switch (m - i0) {
      case 1:
        gram_triangle<1>(rows, vecs, i0, m, gram, prefetch);
        break;
      case 2:
        gram_triangle<2>(rows, vecs, i0, m, gram, prefetch);
        break;
      case 3:
        gram_triangle<3>(rows, vecs, i0, m, gram, prefetch);
        break;
      default:
        gram_triangle<4>(rows, vecs, i0, m, gram, prefetch);
    }
    for (int64_t j0 = i0 + kTileRows; j0 < m; j0 += kTileRows) {
      switch (m - j0) {
        case 1:
          gram_block_pair<1>(rows, vecs, i0, j0, m, gram, prefetch);
          break;
        case 2:
          gram_block_pair<2>(rows, vecs, i0, j0, m, gram, prefetch);
          break;
        case 3:
          gram_block_pair<3>(rows, vecs, i0, j0, m, gram, prefetch);
          break;
        default:
          gram_block_pair<4>(rows, vecs, i0, j0, m, gram, prefetch);
      }
    }
  }
}

// Rows up to which float32 and float64 rows go to the tiles straight from X,
// with 256- and 512-bit vectors, where each conversion is one instruction
// beside the multiply-adds (n = 10, d = 2M on AMD family 23, AVX2: about 10%
// faster than staged). The 128-bit baseline stays staged: direct, its pass
// took 6.4 reads of X against 5.0.
constexpr int64_t kDirectMaxRows = ROBUSTAGG_VEC_BYTES >= 32 ? 12 : 0;

template <InputKind K>
void gram_columns(const RowSource& s, double* gram) {
  const int64_t m = s.n + (s.center != nullptr ? 1 : 0);
  const int64_t mp = round_up(m, kTileRows);
  double* buf = s.scratch;
  double* shift = s.scratch + mp * s.chunk;
  const int64_t source[3] = {0, (s.n - 1) / 2, s.n - 1};  // the rows the shift is the median of
  constexpr bool kCanGoDirect = K == InputKind::kF32 || K == InputKind::kF64;
  const bool direct = kCanGoDirect && m <= kDirectMaxRows;
  for (int64_t c0 = s.col_begin; c0 < s.col_end; c0 += s.chunk) {
    const int64_t count = s.col_end - c0 < s.chunk ? s.col_end - c0 : s.chunk;
    const int64_t padded = round_up(count, Lanes<K>::W);  // zero columns complete the last block
    const int64_t vecs = padded / kD;
    // The shift from the three source rows, read straight from X (0 past
    // count).
    const typename Lanes<K>::In* src[3];
    for (int k = 0; k < 3; ++k) src[k] = row_ptr<K>(s, source[k], c0);
    for (int64_t c = 0; c < padded; c += Lanes<K>::W) {
      const auto a = load_parts<K>(src[0] + c, count - c);
      const auto b = load_parts<K>(src[1] + c, count - c);
      const auto e = load_parts<K>(src[2] + c, count - c);
#pragma GCC unroll 2
      for (int h = 0; h < Lanes<K>::kParts; ++h) {
        const F64v r = shift_of(a.part[h], b.part[h], e.part[h]);
        __builtin_memcpy(shift + c + h * kD, &r, sizeof(r));
      }
    }
    const int64_t next = c0 + s.chunk;
    const int64_t next_count = s.col_end - next < s.chunk ? s.col_end - next : s.chunk;
    Prefetcher<K> prefetch{s, next,
                           next_count > 0 ? next_count * static_cast<int64_t>(sizeof(typename Lanes<K>::In)) : 0,
                           next_count > 0 ? m : 0};
    if constexpr (kCanGoDirect) {
      if (direct) {
        gram_tiles(DirectRows<K>{s, c0, shift, count, count / kD}, vecs, m, gram, prefetch);
        continue;
      }
    }
    for (int64_t i = 0; i < m; ++i) stage_row<K>(row_ptr<K>(s, i, c0), count, padded, buf + i * s.chunk, shift);
    gram_tiles(StagedRows{buf, s.chunk, vecs}, vecs, m, gram, prefetch);
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
  constexpr int kParts = L::kParts;
  if constexpr (K == InputKind::kF32 || K == InputKind::kF64) {
    if (count >= kMixVecs * kD) {  // a whole group, vector by vector (the same values and sums)
#pragma GCC unroll 8
      for (int q = 0; q < kMixVecs; ++q) acc[q] += unfused(coef * widen_vec<K>(p + q * kD));
      return;
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < kMixVecs / kParts; ++b) {
    const int64_t c = b * L::W;
    Wide<kParts> x{};
    if (c < count) x = load_parts<K>(p + c, count - c);
#pragma GCC unroll 2
    for (int h = 0; h < kParts; ++h) acc[b * kParts + h] += unfused(coef * x.part[h]);
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

// What row_sums_columns sums per row: the squares x^2; the squares and the
// products x v; or the squared differences (x - v)^2, with v = s.center.
enum class RowSum { kSquares, kSquaresAndDots, kSquaredDifferences };

// Per row, kAcc native vectors of columns accumulate the sums in turn; they
// are added pairwise at the end of the range, then across lanes in order.
// v's columns are re-read per row from cache.
template <InputKind K, RowSum kSum>
void row_sums_columns(const RowSource& s, double* sums, double* dots) {
  using L = Lanes<K>;
  using In = typename L::In;
  using Parts = Wide<L::kParts>;
  constexpr bool kWithV = kSum != RowSum::kSquares;
  constexpr int kAcc = 4;
  constexpr int kBlocks = kAcc / L::kParts;  // blocks of W columns per step
  const int64_t count = s.col_end - s.col_begin;
  const In* v = kWithV ? static_cast<const In*>(s.center) + s.col_begin : nullptr;
  for (int64_t i = 0; i < s.n; ++i) {
    const In* p = row_ptr<K>(s, i, s.col_begin);
    F64v sq[kAcc] = {}, dot[kAcc] = {};
    auto add = [&](const Parts& x, const Parts& w, int first) {
#pragma GCC unroll 2
      for (int h = 0; h < L::kParts; ++h) {
        const F64v e = kSum == RowSum::kSquaredDifferences ? x.part[h] - w.part[h] : x.part[h];
        sq[first + h] += e * e;
        if constexpr (kSum == RowSum::kSquaresAndDots) dot[first + h] += x.part[h] * w.part[h];
      }
    };
    int64_t c = 0;
    for (; c + kBlocks * L::W <= count; c += kBlocks * L::W)
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) {
        const int64_t col = c + b * L::W;
        add(L::load_parts(p + col), kWithV ? L::load_parts(v + col) : Parts{}, b * L::kParts);
      }
    for (; c < count; c += L::W)  // the last blocks, zero-padded
      add(load_parts<K>(p + c, count - c), kWithV ? load_parts<K>(v + c, count - c) : Parts{}, 0);
    sums[i] += lane_sum((sq[0] + sq[1]) + (sq[2] + sq[3]));
    if constexpr (kSum == RowSum::kSquaresAndDots) dots[i] += lane_sum((dot[0] + dot[1]) + (dot[2] + dot[3]));
  }
}

template <InputKind K>
void norms_columns(const RowSource& s, double* norms) {
  row_sums_columns<K, RowSum::kSquares>(s, norms, nullptr);
}

template <InputKind K>
void norms_dots_columns(const RowSource& s, double* norms, double* dots) {
  row_sums_columns<K, RowSum::kSquaresAndDots>(s, norms, dots);
}

template <InputKind K>
void sq_distances_columns(const RowSource& s, double* out) {
  row_sums_columns<K, RowSum::kSquaredDifferences>(s, out, nullptr);
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

void ROBUSTAGG_CAT(sq_distances_kernel_, ROBUSTAGG_ISA_SUFFIX)(const RowSource& src, double* out) {
  ROBUSTAGG_BY_KIND(sq_distances_columns, src.kind, src, out)
}

void ROBUSTAGG_CAT(norms_dots_kernel_, ROBUSTAGG_ISA_SUFFIX)(const RowSource& src, double* norms, double* dots) {
  ROBUSTAGG_BY_KIND(norms_dots_columns, src.kind, src, norms, dots)
}

}  // namespace robustagg::cpu
