// CUDA kernels of the coordinate-wise rules (SPEC 2). One thread per column:
// consecutive threads read consecutive columns of a row, so every row load is
// coalesced. For n <= kMaxRegisterRows the column's n values sit in registers
// and a compile-time sorting network (Batcher's odd-even merge sort, padded to
// a power of two with a key above NaN) sorts them; larger n sort each column
// tile in shared memory with a bitonic network. Order statistics are combined
// in float64 in ascending order, as the CPU kernel does, so both give the same
// bits.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <utility>

#include "batcher.h"
#include "common.h"

namespace robustagg::cuda {
namespace {

// ---------------------------------------------------------------------------
// Keys: integers whose signed order is the float order with NaN above +inf.

__device__ __forceinline__ int32_t to_key(float v) {
  int32_t b = isnan(v) ? 0x7fc00000 : __float_as_int(v);
  return b ^ ((b >> 31) & 0x7fffffff);
}
__device__ __forceinline__ int64_t to_key(double v) {
  long long b = isnan(v) ? 0x7ff8000000000000LL : __double_as_longlong(v);
  return b ^ ((b >> 63) & 0x7fffffffffffffffLL);
}
__device__ __forceinline__ double key_value(int32_t k) { return __int_as_float(k ^ ((k >> 31) & 0x7fffffff)); }
__device__ __forceinline__ double key_value(int64_t k) {
  return __longlong_as_double(k ^ ((k >> 63) & 0x7fffffffffffffffLL));
}

template <typename T>
struct KeyOf {
  using type = int32_t;  // float, half and bfloat16 are ordered as float32
  static constexpr int32_t kPad = 0x7fffffff;
};
template <>
struct KeyOf<double> {
  using type = int64_t;
  static constexpr int64_t kPad = 0x7fffffffffffffffLL;
};

template <typename T>
__device__ __forceinline__ typename KeyOf<T>::type load_key(const T* p) {
  return to_key(__ldg(p));  // float; the other types are specialised below
}
template <>
__device__ __forceinline__ int64_t load_key<double>(const double* p) {
  return to_key(__ldg(p));
}
template <>
__device__ __forceinline__ int32_t load_key<at::Half>(const at::Half* p) {
  return to_key(__half2float(__ldg(reinterpret_cast<const __half*>(p))));
}
template <>
__device__ __forceinline__ int32_t load_key<at::BFloat16>(const at::BFloat16* p) {
  return to_key(__bfloat162float(__ldg(reinterpret_cast<const __nv_bfloat16*>(p))));
}

// Results are rounded as torch rounds a float64 value to the output dtype
// (half types through float32), so CPU and CUDA agree bit for bit.
__device__ __forceinline__ void store(float* out, double v) { *out = static_cast<float>(v); }
__device__ __forceinline__ void store(double* out, double v) { *out = v; }
__device__ __forceinline__ void store(at::Half* out, double v) {
  *reinterpret_cast<__half*>(out) = __float2half_rn(static_cast<float>(v));
}
__device__ __forceinline__ void store(at::BFloat16* out, double v) {
  *reinterpret_cast<__nv_bfloat16*>(out) = __float2bfloat16_rn(static_cast<float>(v));
}

template <typename Key>
__device__ __forceinline__ void compare_swap(Key& a, Key& b) {
  const Key lo = min(a, b);
  b = max(a, b);
  a = lo;
}

template <int N, int I, typename Key>
__device__ __forceinline__ void comparator(Key (&k)[N]) {
  constexpr int lo = kStaticNetwork<N>.lo[I];
  constexpr int hi = kStaticNetwork<N>.hi[I];
  compare_swap(k[lo], k[hi]);
}

template <int N, typename Key, int... I>
__device__ __forceinline__ void sort_registers(Key (&k)[N], std::integer_sequence<int, I...>) {
  (comparator<N, I>(k), ...);
}

// ---------------------------------------------------------------------------
// (lo + hi) / 2, halving first when the sum of finite values overflows, as
// the CPU kernel does.
__device__ __forceinline__ double midpoint(double lo, double hi) {
  const double m = (lo + hi) * 0.5;
  return (!isfinite(m) && isfinite(lo) && isfinite(hi)) ? lo * 0.5 + hi * 0.5 : m;
}

// Whether `right` is strictly closer to the median m than `left`, as the CPU
// kernel decides it: when a difference is not finite and m is, both are
// compared at half scale, where values that large halve exactly.
template <bool kMagnitudes>
__device__ __forceinline__ bool closer(double right, double m, double left) {
  double dr = right - m;
  double dl = m - left;
  if (!(isfinite(dr) && isfinite(dl)) && isfinite(m)) {
    dr = right * 0.5 - m * 0.5;
    dl = m * 0.5 - left * 0.5;
  }
  if (kMagnitudes) {
    dr = fabs(dr);
    dl = fabs(dl);
  }
  return dr < dl;
}

// MeaMed from a sorted column read through get(t): the n - f values closest to
// the median form a window [k, k + n - f); the window slides right past t < f
// iff the value entering is strictly closer than the one leaving (ties keep
// the smaller value). Summed in ascending order.
template <typename Get>
__device__ __forceinline__ double meamed_of_sorted(Get get, int64_t n, int64_t f, double median) {
  const int64_t w = n - f;
  double sum = 0.0;
  if (f > w) {
    // The window is narrower than the f positions it may slide over (Bulyan's
    // last stage): both values may lie on one side of the median, where equal
    // rounded distances make the decisions non-monotone. The window starts
    // after the last t whose value is strictly farther (sign removed) than the
    // one w places to its right, as in the CPU kernel.
    int64_t start = 0;
    for (int64_t t = 0; t < f; ++t)
      if (closer<true>(get(t + w), median, get(t))) start = t + 1;
    for (int64_t t = start; t < start + w; ++t) sum += get(t);
    return sum / static_cast<double>(w);
  }
  for (int64_t t = 0; t < f; ++t) {
    const double left = get(t);
    if (!closer<false>(get(t + w), median, left)) sum += left;
  }
  for (int64_t t = f; t < w; ++t) sum += get(t);
  for (int64_t t = w; t < n; ++t) {
    const double right = get(t);
    if (closer<false>(right, median, get(t - w))) sum += right;
  }
  return sum / static_cast<double>(w);
}

template <typename Get>
__device__ __forceinline__ double finish_sorted(Get get, int mode, int64_t n, int64_t f) {
  const double lo_mid = get((n - 1) / 2);
  const double median = (n % 2 == 1) ? lo_mid : midpoint(lo_mid, get(n / 2));
  if (mode == static_cast<int>(ColumnRule::kMedian)) return median;
  if (mode == static_cast<int>(ColumnRule::kMeaMed)) return meamed_of_sorted(get, n, f, median);
  double sum = 0.0;
  for (int64_t t = f; t < n - f; ++t) sum += get(t);
  return sum / static_cast<double>(n - 2 * f);
}

// ---------------------------------------------------------------------------
// n <= N: the column in registers. MeaMed reads the sorted keys back through
// shared memory (runtime indices would otherwise push the array to local memory).

constexpr int kRegisterThreads = 128;

template <int N, typename T>
__global__ void __launch_bounds__(kRegisterThreads) select_registers_kernel(const T* __restrict__ x, int64_t n,
                                                                          int64_t row_stride, int64_t d,
                                                                          T* __restrict__ out, int mode,
                                                                          int64_t f) {
  using Key = typename KeyOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = col < d;
  Key k[N];
#pragma unroll
  for (int i = 0; i < N; ++i) k[i] = (active && i < n) ? load_key(x + i * row_stride + col) : KeyOf<T>::kPad;
  sort_registers<N>(k, std::make_integer_sequence<int, StaticNetwork<N>::kCount>{});

  double result;
  if (mode == static_cast<int>(ColumnRule::kMeaMed)) {
    Key* tile = reinterpret_cast<Key*>(smem_raw);
#pragma unroll
    for (int i = 0; i < N; ++i) tile[i * blockDim.x + threadIdx.x] = k[i];
    const Key* mine = tile + threadIdx.x;
    const int stride = blockDim.x;
    result = finish_sorted([&](int64_t t) { return key_value(mine[t * stride]); }, mode, n, f);
  } else {
    // Select keys first and convert only what the rule reads.
    const bool trimmed = mode == static_cast<int>(ColumnRule::kTrimmedMean);
    Key lo_key = k[0], hi_key = k[0];
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i == (n - 1) / 2) lo_key = k[i];
      if (i == n / 2) hi_key = k[i];
      if (trimmed && i >= f && i < n - f) sum += key_value(k[i]);
    }
    const double lo_mid = key_value(lo_key);
    result = trimmed ? sum / static_cast<double>(n - 2 * f)
                     : ((n % 2 == 1) ? lo_mid : midpoint(lo_mid, key_value(hi_key)));
  }
  if (active) store(out + col, result);
}

// ---------------------------------------------------------------------------
// Any n: a tile of `cols` columns x P rows (P = n rounded up to a power of two,
// padded with a key above NaN) is sorted per column in shared memory by a
// bitonic network, then one thread per column reads out the result.

constexpr int kTileThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kTileThreads) select_tile_kernel(const T* __restrict__ x, int64_t n,
                                                                  int64_t row_stride, int64_t d, T* __restrict__ out,
                                                                  int mode, int64_t f, int log2_rows, int log2_cols) {
  using Key = typename KeyOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  Key* tile = reinterpret_cast<Key*>(smem_raw);  // tile[row * cols + c]
  // Tile sizes are powers of two: 32-bit shifts and masks, no division.
  const int cols = 1 << log2_cols;
  const int rows = 1 << log2_rows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) << log2_cols;
  for (int e = threadIdx.x; e < (rows << log2_cols); e += blockDim.x) {
    const int row = e >> log2_cols;
    const int64_t col = col0 + (e & (cols - 1));
    tile[e] = (row < n && col < d) ? load_key(x + row * row_stride + col) : KeyOf<T>::kPad;
  }
  __syncthreads();
  const int pairs = (rows / 2) << log2_cols;
  for (int log2_size = 1; log2_size <= log2_rows; ++log2_size) {
    for (int log2_stride = log2_size - 1; log2_stride >= 0; --log2_stride) {
      const int stride = 1 << log2_stride;
      for (int e = threadIdx.x; e < pairs; e += blockDim.x) {
        const int c = e & (cols - 1);
        const int pair = e >> log2_cols;
        // The pair's lower row: a zero bit inserted at position log2(stride).
        const int i = ((pair >> log2_stride) << (log2_stride + 1)) | (pair & (stride - 1));
        const int j = i + stride;
        Key& a = tile[(i << log2_cols) + c];
        Key& b = tile[(j << log2_cols) + c];
        const bool ascending = ((i >> log2_size) & 1) == 0;
        if ((a > b) == ascending) {
          const Key t = a;
          a = b;
          b = t;
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x < cols && col0 + threadIdx.x < d) {
    const Key* mine = tile + threadIdx.x;
    const double r = finish_sorted([&](int64_t t) { return key_value(mine[t << log2_cols]); }, mode, n, f);
    store(out + col0 + threadIdx.x, r);
  }
}

// Shared memory the tile kernel may use per block (opted in above 48 KB).
constexpr int64_t kTileSmemBytes = 96 * 1024;
constexpr int kMaxRegisterRows = 64;

int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

template <int N, typename T>
void launch_registers(const T* x, int64_t n, int64_t row_stride, int64_t d, T* out, int mode, int64_t f,
                      cudaStream_t stream) {
  using Key = typename KeyOf<T>::type;
  const size_t smem = mode == static_cast<int>(ColumnRule::kMeaMed) ? N * kRegisterThreads * sizeof(Key) : 0;
  auto kernel = select_registers_kernel<N, T>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const int64_t blocks = (d + kRegisterThreads - 1) / kRegisterThreads;
  kernel<<<static_cast<unsigned>(blocks), kRegisterThreads, smem, stream>>>(x, n, row_stride, d, out, mode, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_select(const T* x, int64_t n, int64_t row_stride, int64_t d, T* out, int mode, int64_t f,
                   cudaStream_t stream) {
  using Key = typename KeyOf<T>::type;
  // float64 keys take two registers each: keep 64 of them out of registers.
  constexpr int kRegisterLimit = sizeof(Key) == 8 ? 32 : kMaxRegisterRows;
  if (n <= 8) return launch_registers<8>(x, n, row_stride, d, out, mode, f, stream);
  if (n <= 16) return launch_registers<16>(x, n, row_stride, d, out, mode, f, stream);
  if (n <= 32) return launch_registers<32>(x, n, row_stride, d, out, mode, f, stream);
  if constexpr (kRegisterLimit >= 64) {
    if (n <= 64) return launch_registers<64>(x, n, row_stride, d, out, mode, f, stream);
  }
  // Rows are padded to a power of two; one column of the largest tile fills the budget.
  const int64_t max_rows = next_pow2(kTileSmemBytes / static_cast<int64_t>(sizeof(Key)) + 1) / 2;
  TORCH_CHECK_VALUE(n <= max_rows, message("CUDA selection kernels support n <= ", max_rows,
                                           " rows for this dtype, got n=", n, "; move X to the CPU for larger n"));
  int log2_rows = 0;
  while ((int64_t{1} << log2_rows) < n) ++log2_rows;
  int log2_cols = 5;  // 32 columns: one warp reads 128 contiguous bytes of a row
  while (log2_cols > 0 && (int64_t{sizeof(Key)} << (log2_rows + log2_cols)) > kTileSmemBytes) --log2_cols;
  const int64_t smem = int64_t{sizeof(Key)} << (log2_rows + log2_cols);
  auto kernel = select_tile_kernel<T>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const int64_t blocks = (d + (int64_t{1} << log2_cols) - 1) >> log2_cols;
  kernel<<<static_cast<unsigned>(blocks), kTileThreads, smem, stream>>>(x, n, row_stride, d, out, mode, f, log2_rows,
                                                                        log2_cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor select_cuda(const at::Tensor& X_in, ColumnRule mode, int64_t f) {
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  at::Tensor out = at::empty({d}, X.options());
  if (d == 0) return out;
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "select_cuda", [&] {
    launch_select<scalar_t>(X.const_data_ptr<scalar_t>(), n, row_stride, d, out.mutable_data_ptr<scalar_t>(),
                            static_cast<int>(mode), f, stream);
  });
  return out;
}

// ---------------------------------------------------------------------------
// Weighted mean: sum_i w_i x_i / sum_i w_i in float64, one thread per column.

template <typename T>
__device__ __forceinline__ double load_value(const T* p) {
  return static_cast<double>(static_cast<float>(*p));
}
template <>
__device__ __forceinline__ double load_value<double>(const double* p) {
  return __ldg(p);
}
template <>
__device__ __forceinline__ double load_value<float>(const float* p) {
  return __ldg(p);
}

template <typename T>
__global__ void mean_kernel(const T* __restrict__ x, int64_t n, int64_t row_stride, int64_t d,
                            const double* __restrict__ w, double wsum, T* __restrict__ out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  double acc = 0.0;
  // Unrolled so that several rows' loads are in flight at once.
  if (w == nullptr) {
#pragma unroll 8
    for (int64_t i = 0; i < n; ++i) acc += load_value(x + i * row_stride + col);
  } else {
#pragma unroll 8
    for (int64_t i = 0; i < n; ++i) acc += w[i] * load_value(x + i * row_stride + col);
  }
  store(out + col, acc / wsum);
}

at::Tensor mean_cuda(const at::Tensor& X_in, const std::optional<at::Tensor>& weights) {
  check_matrix(X_in, "mean");
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  at::Tensor w64;
  double wsum = static_cast<double>(n);
  if (weights.has_value()) w64 = check_weights(X, *weights, "mean", &wsum);
  at::Tensor out = at::empty({d}, X.options());
  if (d == 0) return out;
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  constexpr int kThreads = 256;
  const int64_t blocks = (d + kThreads - 1) / kThreads;
  const double* w = weights.has_value() ? w64.const_data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "mean_cuda", [&] {
    mean_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        X.const_data_ptr<scalar_t>(), n, row_stride, d, w, wsum, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor coordinate_median_cuda(const at::Tensor& X) {
  check_matrix(X, "coordinate_median");
  return select_cuda(X, ColumnRule::kMedian, 0);
}

at::Tensor trimmed_mean_cuda(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "trimmed_mean");
  return select_cuda(X, ColumnRule::kTrimmedMean, f);
}

at::Tensor meamed_cuda(const at::Tensor& X, int64_t f) {
  check_trim(X, f, "meamed");
  return select_cuda(X, ColumnRule::kMeaMed, f);
}

at::Tensor mean_around_median_cuda(const at::Tensor& X, int64_t keep) {
  check_keep(X, keep, "mean_around_median");
  return select_cuda(X, ColumnRule::kMeaMed, X.size(0) - keep);
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("mean", &mean_cuda);
  m.impl("coordinate_median", &coordinate_median_cuda);
  m.impl("trimmed_mean", &trimmed_mean_cuda);
  m.impl("meamed", &meamed_cuda);
  m.impl("mean_around_median", &mean_around_median_cuda);
}

}  // namespace robustagg::cuda
