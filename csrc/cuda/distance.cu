// CUDA kernels of the distance ops (SPEC 3): pairwise squared distances from a
// shifted Gram matrix, row mixing and row norms. Everything is accumulated in
// float64 (no TF32, no cuBLAS), and every reduction runs in an order fixed by
// the shape alone, so the same input gives the same bits run after run.
//
// Pairwise distances. Each column c is shifted by r_c, the median of rows 0,
// (n-1)/2 and n-1 (non-finite values read as 0): p_i = x_i - r. Distances do
// not change, but the Gram matrix S = P P^T of nearby points far from the
// origin no longer cancels catastrophically in D_ij = S_ii + S_jj - 2 S_ij.
//  1. gram_kernel: S is cut into 32 x 32 tiles (upper triangle only) and the
//     columns into chunks (split-K). One block of 64 threads per (tile pair,
//     chunk); each thread owns a 4 x 4 register tile. 32-column slabs of both
//     row tiles are staged in shared memory as shifted float64 while the next
//     slab is loaded into registers; products are accumulated with fma in
//     float64. Each chunk's tile goes to a scratch buffer.
//  2. distance_finish_kernel: per tile pair, adds the chunks' partial tiles in
//     chunk order (many chunks are first added in groups by sum_parts_kernel;
//     diagonal tiles too, for S_ii), forms D and writes it and its mirror
//     image, so D_ij and D_ji are the same bits.
// The chunk count depends only on (m, d).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "common.h"

namespace robustagg::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Loads. Values stay in their storage type until they are used, so that loads
// issued ahead of the arithmetic do not wait for a conversion.

template <typename T>
struct Raw {
  using type = T;
};
template <>
struct Raw<at::Half> {
  using type = __half;
};
template <>
struct Raw<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
__device__ __forceinline__ typename Raw<T>::type load_raw(const T* p) {
  return __ldg(reinterpret_cast<const typename Raw<T>::type*>(p));
}

// Half types widen through float32, as torch converts them.
__device__ __forceinline__ double to_double(float v) { return v; }
__device__ __forceinline__ double to_double(double v) { return v; }
__device__ __forceinline__ double to_double(__half v) { return __half2float(v); }
__device__ __forceinline__ double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ double load_value(const T* p) {
  return to_double(load_raw(p));
}

// Results are rounded as torch rounds a float64 value to the output dtype
// (half types through float32).
__device__ __forceinline__ void store(float* out, double v) { *out = static_cast<float>(v); }
__device__ __forceinline__ void store(double* out, double v) { *out = v; }
__device__ __forceinline__ void store(at::Half* out, double v) {
  *reinterpret_cast<__half*>(out) = __float2half_rn(static_cast<float>(v));
}
__device__ __forceinline__ void store(at::BFloat16* out, double v) {
  *reinterpret_cast<__nv_bfloat16*>(out) = __float2bfloat16_rn(static_cast<float>(v));
}

// ---------------------------------------------------------------------------
// Split reductions leave partial results laid out [part][stride]; they are
// added in part order: out[g][e] = sum of in[p][e] over the parts p of group g,
// [g * per_group, (g + 1) * per_group).

constexpr int kSumThreads = 256;

__global__ void __launch_bounds__(kSumThreads)
    sum_parts_kernel(const double* __restrict__ in, int64_t stride, int64_t parts, int64_t per_group,
                     double* __restrict__ out) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= stride) return;
  const int64_t group = blockIdx.y;
  const int64_t end = min((group + 1) * per_group, parts);
  double s = 0.0;
  for (int64_t p = group * per_group; p < end; ++p) s += in[p * stride + e];
  out[group * stride + e] = s;
}

void sum_parts(const double* in, int64_t stride, int64_t parts, int64_t per_group, double* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(stride, kSumThreads)),
                  static_cast<unsigned>(ceil_div(parts, per_group)));
  sum_parts_kernel<<<grid, kSumThreads, 0, stream>>>(in, stride, parts, per_group, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------
// Pairwise squared distances.

constexpr int kTile = 32;            // rows per side of an output tile
constexpr int kSlab = 32;            // columns staged per step
constexpr int kGramThreads = 64;     // an 8 x 8 thread grid
constexpr int kSide = 8;             // threads per side of the grid
constexpr int kSub = kTile / kSide;  // 4: rows (and columns) per thread, for loads and outputs
// Shared rows are kTile + kPad doubles: with 4, the staging stores of a warp
// (8 columns x 4 rows) hit every bank pair exactly twice.
constexpr int kPad = 4;
constexpr int64_t kTileElems = int64_t{kTile} * kTile;
constexpr int kFinishThreads = 256;
static_assert(kSide * kSide == kGramThreads && kSub * kSide == kSlab, "the thread grid must cover tile and slab");
static_assert(kTileElems % kFinishThreads == 0, "finish threads must divide the tile");

// Split-K: chunks of at least kMinChunkSlabs slabs, about kTargetBlocks blocks
// in all, and at most kMaxPartialTiles partial tiles (64 MiB) unless the tile
// pairs alone need more (then one chunk). Constants, not device properties, so
// results never depend on the GPU. Above kFinishParts chunks, the partial
// tiles are first added in about sqrt(chunks) groups by the whole GPU, as one
// block per tile pair would read them all too slowly.
constexpr int64_t kMinChunkSlabs = 32;
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kMaxPartialTiles = 8192;
constexpr int64_t kFinishParts = 16;

// Tile pair p (row-major over the upper triangle of tiles x tiles) -> (ti, tj), ti <= tj.
__device__ __forceinline__ void tile_pair(int64_t p, int64_t tiles, int64_t& ti, int64_t& tj) {
  ti = 0;
  while (p >= tiles - ti) {
    p -= tiles - ti;
    ++ti;
  }
  tj = ti + p;
}

__device__ __forceinline__ int64_t diagonal_pair(int64_t t, int64_t tiles) { return t * tiles - t * (t - 1) / 2; }

__device__ __forceinline__ double finite_or_zero(double v) { return isfinite(v) ? v : 0.0; }

// Median of three, with the CPU kernel's compares (equal values and signed
// zeros resolve alike on both devices).
__device__ __forceinline__ double median3(double a, double b, double e) {
  const double lo = a < b ? a : b;
  const double hi = a < b ? b : a;
  const double hi_e = hi < e ? hi : e;
  return lo < hi_e ? hi_e : lo;
}

// Rows 0..n-1 are X's, row n (when m = n + 1) is the center.
template <typename T>
__global__ void __launch_bounds__(kGramThreads)
    gram_kernel(const T* __restrict__ x, const T* __restrict__ center, int64_t n, int64_t m, int64_t row_stride,
                int64_t d, int64_t tiles, int64_t pairs, int64_t slabs, int64_t slabs_per_chunk,
                double* __restrict__ partial) {
  using R = typename Raw<T>::type;
  // [column][row]: the compute loop reads 4 distinct rows of sa (a broadcast)
  // and 8 consecutive rows of sb per warp, one wavefront each.
  __shared__ double sa[kSlab][kTile + kPad];
  __shared__ double sb[kSlab][kTile + kPad];
  __shared__ double shift[kSlab];
  const int64_t pair = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  int64_t ti, tj;
  tile_pair(pair, tiles, ti, tj);
  const bool diagonal = ti == tj;  // both row tiles are the same: stage one
  const double (*sbr)[kTile + kPad] = diagonal ? sa : sb;
  const int64_t slab_begin = chunk * slabs_per_chunk;
  const int64_t slab_end = min(slab_begin + slabs_per_chunk, slabs);
  const int t = threadIdx.x;
  const int tx = t % kSide;
  const int ty = t / kSide;

  // Loads: thread (ty, tx) takes rows ty + 8 i and columns tx + 8 j of a slab,
  // so a warp reads 8 consecutive columns of 4 rows at once. A row is a
  // pointer to its column 0: X's row, the center, or null for padding. The
  // first warp also loads the slab's shift sources, one column per thread.
  const T* rows_a[kSub];
  const T* rows_b[kSub];
#pragma unroll
  for (int i = 0; i < kSub; ++i) {
    const int64_t a = ti * kTile + ty + kSide * i;
    const int64_t b = tj * kTile + ty + kSide * i;
    rows_a[i] = a < n ? x + a * row_stride : (a < m ? center : nullptr);
    rows_b[i] = b < n ? x + b * row_stride : (b < m ? center : nullptr);
  }
  const T* shift_rows[3] = {x, x + (n - 1) / 2 * row_stride, x + (n - 1) * row_stride};

  R ra[kSub][kSub], rb[kSub][kSub], rs[3];
#pragma unroll
  for (int h = 0; h < 3; ++h) rs[h] = R{};
  auto load_tile = [&](R(&v)[kSub][kSub], const T* const(&rows)[kSub], int64_t col0) {
#pragma unroll
    for (int i = 0; i < kSub; ++i)
#pragma unroll
      for (int j = 0; j < kSub; ++j) {
        const int64_t col = col0 + tx + kSide * j;
        v[i][j] = rows[i] != nullptr && col < d ? load_raw(rows[i] + col) : R{};
      }
  };
  auto load = [&](int64_t slab) {
    const int64_t col0 = slab * kSlab;
    if (t < kSlab && col0 + t < d) {
#pragma unroll
      for (int h = 0; h < 3; ++h) rs[h] = load_raw(shift_rows[h] + col0 + t);
    }
    load_tile(ra, rows_a, col0);
    if (!diagonal) load_tile(rb, rows_b, col0);
  };
  auto publish_shift = [&](int64_t slab) {
    if (t < kSlab) {
      const bool col_ok = slab * kSlab + t < d;
      shift[t] = col_ok ? median3(finite_or_zero(to_double(rs[0])), finite_or_zero(to_double(rs[1])),
                                  finite_or_zero(to_double(rs[2])))
                        : 0.0;
    }
  };
  // Shifted points; padded rows and columns stage 0, so they add nothing.
  auto stage_tile = [&](double (*dst)[kTile + kPad], const R(&v)[kSub][kSub], const T* const(&rows)[kSub],
                        int64_t col0) {
#pragma unroll
    for (int i = 0; i < kSub; ++i)
#pragma unroll
      for (int j = 0; j < kSub; ++j) {
        const int c = tx + kSide * j;
        const bool ok = rows[i] != nullptr && col0 + c < d;
        dst[c][ty + kSide * i] = ok ? to_double(v[i][j]) - shift[c] : 0.0;
      }
  };

  // Outputs: rows ty + 8 u of tile ti, columns tx + 8 v of tile tj.
  double acc[kSub][kSub];
#pragma unroll
  for (int u = 0; u < kSub; ++u)
#pragma unroll
    for (int v = 0; v < kSub; ++v) acc[u][v] = 0.0;

  // Two barriers per slab: after staging, and after the arithmetic (which
  // also publishes the next slab's shift, once every thread has staged).
  load(slab_begin);
  publish_shift(slab_begin);
  __syncthreads();
  for (int64_t slab = slab_begin; slab < slab_end; ++slab) {
    const int64_t col0 = slab * kSlab;
    stage_tile(sa, ra, rows_a, col0);
    if (!diagonal) stage_tile(sb, rb, rows_b, col0);
    __syncthreads();
    const bool more = slab + 1 < slab_end;
    if (more) load(slab + 1);  // in flight during the arithmetic
#pragma unroll
    for (int k = 0; k < kSlab; ++k) {
      double a[kSub], b[kSub];
#pragma unroll
      for (int u = 0; u < kSub; ++u) a[u] = sa[k][ty + kSide * u];
#pragma unroll
      for (int v = 0; v < kSub; ++v) b[v] = sbr[k][tx + kSide * v];
#pragma unroll
      for (int u = 0; u < kSub; ++u)
#pragma unroll
        for (int v = 0; v < kSub; ++v) acc[u][v] = fma(a[u], b[v], acc[u][v]);
    }
    if (more) publish_shift(slab + 1);
    __syncthreads();
  }

  double* out = partial + (chunk * pairs + pair) * kTileElems;
#pragma unroll
  for (int u = 0; u < kSub; ++u)
#pragma unroll
    for (int v = 0; v < kSub; ++v) out[(ty + kSide * u) * kTile + tx + kSide * v] = acc[u][v];
}

// D from the partial Gram tiles ([part][pair][row][column]), one tile pair per block.
__global__ void __launch_bounds__(kFinishThreads)
    distance_finish_kernel(const double* __restrict__ partial, int64_t m, int64_t tiles, int64_t pairs, int64_t parts,
                           double* __restrict__ dist, bool* __restrict__ finite) {
  constexpr int kPerThread = static_cast<int>(kTileElems / kFinishThreads);
  __shared__ double diag[2 * kTile];  // S_ii of tile ti's rows, then of tile tj's
  __shared__ double tile[kTile][kTile + 1];
  const int64_t pair = blockIdx.x;
  int64_t ti, tj;
  tile_pair(pair, tiles, ti, tj);
  const int t = threadIdx.x;
  const int64_t part_stride = pairs * kTileElems;

  // The diagonal is summed in the same order as every other entry, so each
  // block that needs S_ii gets the same bits.
  if (t < 2 * kTile) {
    const int r = t % kTile;
    const double* p = partial + diagonal_pair(t < kTile ? ti : tj, tiles) * kTileElems + r * (kTile + 1);
    double s = 0.0;
    for (int64_t c = 0; c < parts; ++c) s += p[c * part_stride];
    diag[t] = s;
    // Each row's flag is written once, by its diagonal tile pair.
    const int64_t i = ti * kTile + r;
    if (ti == tj && t < kTile && i < m) finite[i] = isfinite(s);
  }

  const double* p = partial + pair * kTileElems + t;
  double s[kPerThread];
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) s[q] = 0.0;
  for (int64_t c = 0; c < parts; ++c) {
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) s[q] += p[c * part_stride + q * kFinishThreads];
  }
  __syncthreads();

  constexpr double kInf = std::numeric_limits<double>::infinity();
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const int e = t + q * kFinishThreads;
    const int r = e / kTile;
    const int c = e % kTile;
    const double sii = diag[r];
    const double sjj = diag[kTile + c];
    // A non-finite S_ii means row i holds a non-finite value: infinitely far.
    double v = kInf;
    if (isfinite(sii) && isfinite(sjj)) {
      const double g = sii + sjj - 2.0 * s[q];
      v = 0.0 < g ? g : 0.0;  // std::max(0.0, g), as the CPU kernel (NaN -> 0)
    }
    tile[r][c] = v;
    const int64_t i = ti * kTile + r;
    const int64_t j = tj * kTile + c;
    if (i <= j && j < m) dist[i * m + j] = i == j ? 0.0 : v;
  }
  __syncthreads();
  // The mirror image, written through shared memory so the stores stay coalesced.
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const int e = t + q * kFinishThreads;
    const int jr = e / kTile;
    const int ic = e % kTile;
    const int64_t i = ti * kTile + ic;
    const int64_t j = tj * kTile + jr;
    if (i < j && j < m) dist[j * m + i] = tile[ic][jr];
  }
}

std::tuple<at::Tensor, at::Tensor> pairwise_sq_distances_cuda(const at::Tensor& X_in,
                                                              const std::optional<at::Tensor>& center_in) {
  constexpr const char* rule = "pairwise_sq_distances";
  check_rows(X_in, center_in, rule);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const at::Tensor center = center_in.has_value() ? center_in->contiguous() : at::Tensor();
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  const int64_t m = n + (center.defined() ? 1 : 0);
  const at::TensorOptions f64 = X.options().dtype(at::kDouble);
  if (d == 0) return {at::zeros({m, m}, f64), at::ones({m}, X.options().dtype(at::kBool))};
  at::Tensor dist = at::empty({m, m}, f64);
  at::Tensor finite = at::empty({m}, X.options().dtype(at::kBool));

  const int64_t tiles = ceil_div(m, kTile);
  const int64_t pairs = tiles * (tiles + 1) / 2;
  const int64_t slabs = ceil_div(d, kSlab);
  const int64_t by_work = ceil_div(slabs, kMinChunkSlabs);
  const int64_t by_blocks = ceil_div(kTargetBlocks, pairs);
  const int64_t by_memory = kMaxPartialTiles / pairs;
  const int64_t want = std::max<int64_t>(1, std::min({by_work, by_blocks, by_memory}));
  const int64_t slabs_per_chunk = ceil_div(slabs, want);
  const int64_t chunks = ceil_div(slabs, slabs_per_chunk);  // every chunk has at least one slab
  at::Tensor partial = at::empty({chunks * pairs * kTileElems}, f64);

  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "pairwise_sq_distances_cuda", [&] {
    const scalar_t* c = center.defined() ? center.const_data_ptr<scalar_t>() : nullptr;
    gram_kernel<scalar_t>
        <<<dim3(static_cast<unsigned>(pairs), static_cast<unsigned>(chunks)), kGramThreads, 0, stream>>>(
            X.const_data_ptr<scalar_t>(), c, n, m, row_stride, d, tiles, pairs, slabs, slabs_per_chunk,
            partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor sums = partial;
  int64_t parts = chunks;
  if (chunks > kFinishParts) {
    int64_t per_group = 1;
    while (per_group * per_group < chunks) ++per_group;
    parts = ceil_div(chunks, per_group);
    sums = at::empty({parts * pairs * kTileElems}, f64);
    sum_parts(partial.const_data_ptr<double>(), pairs * kTileElems, chunks, per_group, sums.mutable_data_ptr<double>(),
              stream);
  }
  distance_finish_kernel<<<static_cast<unsigned>(pairs), kFinishThreads, 0, stream>>>(
      sums.const_data_ptr<double>(), m, tiles, pairs, parts, dist.mutable_data_ptr<double>(),
      finite.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dist, finite};
}

// ---------------------------------------------------------------------------
// Row mixing: one thread per column, output rows over gridDim.y. Coefficients
// are block-uniform, so skipping a zero one never diverges.

constexpr int kMixThreads = 256;
constexpr int kMixGroup = 8;  // rows whose loads are in flight together
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void __launch_bounds__(kMixThreads)
    mix_rows_kernel(const double* __restrict__ C, const T* __restrict__ x, const T* __restrict__ center, int64_t n,
                    int64_t row_stride, int64_t d, int64_t k, T* __restrict__ out) {
  using R = typename Raw<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  const int64_t m = n + (center != nullptr ? 1 : 0);
  for (int64_t r = blockIdx.y; r < k; r += gridDim.y) {
    const double* coef = C + r * m;
    double acc = -0.0;  // the additive identity: a lone term keeps its sign of zero
    int64_t i = 0;
    for (; i + kMixGroup <= n; i += kMixGroup) {
      double w[kMixGroup];
      R v[kMixGroup];
#pragma unroll
      for (int u = 0; u < kMixGroup; ++u) w[u] = __ldg(coef + i + u);
      // A row with coefficient 0 is not read: it may hold NaN or inf.
#pragma unroll
      for (int u = 0; u < kMixGroup; ++u) v[u] = w[u] != 0.0 ? load_raw(x + (i + u) * row_stride + col) : R{};
#pragma unroll
      for (int u = 0; u < kMixGroup; ++u)
        if (w[u] != 0.0) acc += w[u] * to_double(v[u]);
    }
    for (; i < n; ++i) {
      const double w = __ldg(coef + i);
      if (w != 0.0) acc += w * load_value(x + i * row_stride + col);
    }
    if (center != nullptr) {
      const double w = __ldg(coef + n);
      if (w != 0.0) acc += w * load_value(center + col);
    }
    store(out + r * d + col, acc);
  }
}

at::Tensor mix_rows_cuda(const at::Tensor& C_in, const at::Tensor& X_in, const std::optional<at::Tensor>& center_in) {
  constexpr const char* rule = "mix_rows";
  check_rows(X_in, center_in, rule);
  check_coefficients(C_in, X_in, center_in.has_value(), rule);
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const at::Tensor center = center_in.has_value() ? center_in->contiguous() : at::Tensor();
  const at::Tensor C = C_in.contiguous();
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  const int64_t k = C.size(0);
  at::Tensor out = at::empty({k, d}, X.options());
  if (k == 0 || d == 0) return out;
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(ceil_div(d, kMixThreads)), static_cast<unsigned>(std::min(k, kMaxGridY)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "mix_rows_cuda", [&] {
    const scalar_t* c = center.defined() ? center.const_data_ptr<scalar_t>() : nullptr;
    mix_rows_kernel<scalar_t><<<grid, kMixThreads, 0, stream>>>(C.const_data_ptr<double>(),
                                                                X.const_data_ptr<scalar_t>(), c, n, row_stride, d, k,
                                                                out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---------------------------------------------------------------------------
// Row sums: the squared norms, with or without the dot products with v, or
// the squared distances to v: grid (rows, column
// chunks); each block sums its chunk with a fixed-shape tree into
// partial[chunk][row] (the dots into partial[chunk][n + row]), and the chunks
// are then added in order. The chunk count depends only on (n, d).

constexpr int kNormThreads = 256;
constexpr int64_t kNormMinColumns = 16 * kNormThreads;

// Adds red[0, kNormThreads) into red[0] with a fixed tree.
__device__ __forceinline__ void block_tree_sum(double* red) {
  const int t = threadIdx.x;
  __syncthreads();
#pragma unroll
  for (int s = kNormThreads / 2; s > 0; s /= 2) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
}

// What a row sum adds up: x^2; x^2 and x v; or (x - v)^2.
enum class RowSum { kSquares, kSquaresAndDots, kSquaredDifferences };

template <typename T, RowSum kSum>
__global__ void __launch_bounds__(kNormThreads)
    row_sums_kernel(const T* __restrict__ x, const T* __restrict__ v, int64_t n, int64_t row_stride, int64_t d,
                    int64_t chunk_cols, double* __restrict__ partial) {
  constexpr bool kDots = kSum == RowSum::kSquaresAndDots;
  __shared__ double red[kDots ? 2 : 1][kNormThreads];
  const int64_t row = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int t = threadIdx.x;
  const T* p = x + row * row_stride;
  const int64_t end = min(d, (chunk + 1) * chunk_cols);
  double sq = 0.0;
  double dot = 0.0;
#pragma unroll 4
  for (int64_t c = chunk * chunk_cols + t; c < end; c += kNormThreads) {
    const double a = load_value(p + c);
    if constexpr (kSum == RowSum::kSquaredDifferences) {
      const double e = a - load_value(v + c);
      sq = fma(e, e, sq);
    } else {
      sq = fma(a, a, sq);
    }
    if constexpr (kDots) dot = fma(a, load_value(v + c), dot);
  }
  red[0][t] = sq;
  block_tree_sum(red[0]);
  if (t == 0) partial[chunk * (kDots ? 2 : 1) * n + row] = red[0][0];
  if constexpr (kDots) {
    red[1][t] = dot;
    block_tree_sum(red[1]);
    if (t == 0) partial[(chunk * 2 + 1) * n + row] = red[1][0];
  }
}

// (sums, n) float64 row sums of kind `sum` (v given unless kSquares).
at::Tensor row_sums_cuda(const at::Tensor& X_in, const std::optional<at::Tensor>& v_in, RowSum sum, const char* rule) {
  check_rows(X_in, v_in, rule, "v");
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const at::Tensor v = v_in.has_value() ? v_in->contiguous() : at::Tensor();
  const int64_t sums = sum == RowSum::kSquaresAndDots ? 2 : 1;
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  const at::TensorOptions f64 = X.options().dtype(at::kDouble);
  if (d == 0) return at::zeros({sums, n}, f64);
  at::Tensor out = at::empty({sums, n}, f64);
  const int64_t want = std::max<int64_t>(1, std::min(ceil_div(d, kNormMinColumns), ceil_div(kTargetBlocks, n)));
  const int64_t chunk_cols = ceil_div(ceil_div(d, want), kNormThreads) * kNormThreads;
  const int64_t chunks = ceil_div(d, chunk_cols);
  // One chunk: the block sums are the results.
  at::Tensor partial = chunks == 1 ? out : at::empty({chunks * sums * n}, f64);
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(chunks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "row_sums_cuda", [&] {
    const scalar_t* x = X.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.defined() ? v.const_data_ptr<scalar_t>() : nullptr;
    double* part = partial.mutable_data_ptr<double>();
    switch (sum) {
      case RowSum::kSquares:
        row_sums_kernel<scalar_t, RowSum::kSquares>
            <<<grid, kNormThreads, 0, stream>>>(x, vp, n, row_stride, d, chunk_cols, part);
        break;
      case RowSum::kSquaresAndDots:
        row_sums_kernel<scalar_t, RowSum::kSquaresAndDots>
            <<<grid, kNormThreads, 0, stream>>>(x, vp, n, row_stride, d, chunk_cols, part);
        break;
      case RowSum::kSquaredDifferences:
        row_sums_kernel<scalar_t, RowSum::kSquaredDifferences>
            <<<grid, kNormThreads, 0, stream>>>(x, vp, n, row_stride, d, chunk_cols, part);
        break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (chunks > 1) {
    sum_parts(partial.const_data_ptr<double>(), sums * n, chunks, chunks, out.mutable_data_ptr<double>(), stream);
  }
  return out;
}

at::Tensor row_sq_norms_cuda(const at::Tensor& X) {
  return row_sums_cuda(X, std::nullopt, RowSum::kSquares, "row_sq_norms")[0];
}

at::Tensor row_sq_norms_and_dots_cuda(const at::Tensor& X, const at::Tensor& v) {
  return row_sums_cuda(X, v, RowSum::kSquaresAndDots, "row_sq_norms_and_dots");
}

at::Tensor row_sq_distances_cuda(const at::Tensor& X, const at::Tensor& v) {
  return row_sums_cuda(X, v, RowSum::kSquaredDifferences, "row_sq_distances")[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("pairwise_sq_distances", &pairwise_sq_distances_cuda);
  m.impl("mix_rows", &mix_rows_cuda);
  m.impl("row_sq_norms", &row_sq_norms_cuda);
  m.impl("row_sq_norms_and_dots", &row_sq_norms_and_dots_cuda);
  m.impl("row_sq_distances", &row_sq_distances_cuda);
}

}  // namespace robustagg::cuda
