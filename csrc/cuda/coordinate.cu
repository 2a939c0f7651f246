// CUDA kernels of the coordinate-wise rules (SPEC 2). One thread per column:
// consecutive threads read consecutive columns of a row, so every row load is
// coalesced. For n <= kCudaMaxRegisterRows the column's n values sit in registers
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
#include <type_traits>
#include <utility>

#include "column_rule.h"
#include "common.h"
#include "coordinate_ops.h"
#include "float_key.h"
#include "kernel_constants.h"
#include "meamed_window.h"
#include "sorting_network.h"

namespace robustagg::cuda {
namespace {

// ---------------------------------------------------------------------------
// Keys (float_key.h).

__device__ __forceinline__ int32_t to_key(float v) { return float_key<int32_t>(__float_as_int(v)); }
__device__ __forceinline__ int64_t to_key(double v) {
  return float_key<int64_t>(static_cast<int64_t>(__double_as_longlong(v)));
}
__device__ __forceinline__ double key_value(int32_t k) { return __int_as_float(key_bits<int32_t>(k)); }
__device__ __forceinline__ double key_value(int64_t k) { return __longlong_as_double(key_bits<int64_t>(k)); }

template <typename T>
struct KeyOf {
  using type = int32_t;  // float, half and bfloat16 are ordered as float32
};
template <>
struct KeyOf<double> {
  using type = int64_t;
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
// MeaMed from a sorted column read through get(t): the window of w = n - f
// sorted positions (meamed_window.h), summed in ascending order.
template <typename Get>
__device__ __forceinline__ double meamed_of_sorted(Get get, int64_t n, int64_t f, double median) {
  const int64_t w = n - f;
  double sum = 0.0;
  if (meamed_window_is_narrow(n, f)) {
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
__device__ __forceinline__ double finish_sorted(Get get, ColumnRule rule, int64_t n, int64_t f) {
  const double lo_mid = get((n - 1) / 2);
  const double median = (n % 2 == 1) ? lo_mid : midpoint(lo_mid, get(n / 2));
  if (rule == ColumnRule::kMedian) return median;
  if (rule == ColumnRule::kMeaMed) return meamed_of_sorted(get, n, f, median);
  double sum = 0.0;
  for (int64_t t = f; t < n - f; ++t) sum += get(t);
  return sum / static_cast<double>(n - 2 * f);
}

// ---------------------------------------------------------------------------
// n <= N: the column in registers. MeaMed reads the sorted keys back through
// shared memory (runtime indices would otherwise push the array to local memory).

constexpr int kRegisterThreads = 128;

template <int N, typename T>
__global__ void __launch_bounds__(kRegisterThreads)
    select_registers_kernel(const T* __restrict__ x, int64_t n, int64_t row_stride, int64_t d, T* __restrict__ out,
                            ColumnRule rule, int64_t f) {
  using Key = typename KeyOf<T>::type;
  extern __shared__ unsigned char smem_raw[];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = col < d;
  Key k[N];
#pragma unroll
  for (int i = 0; i < N; ++i) k[i] = (active && i < n) ? load_key(x + i * row_stride + col) : kPadKey<Key>;
  sort_registers<N>(k, std::make_integer_sequence<int, StaticNetwork<N>::kCount>{});

  double result;
  if (rule == ColumnRule::kMeaMed) {
    Key* tile = reinterpret_cast<Key*>(smem_raw);
#pragma unroll
    for (int i = 0; i < N; ++i) tile[i * blockDim.x + threadIdx.x] = k[i];
    const Key* mine = tile + threadIdx.x;
    const int stride = blockDim.x;
    result = finish_sorted([&](int64_t t) { return key_value(mine[t * stride]); }, rule, n, f);
  } else {
    // Select keys first and convert only what the rule reads.
    const bool trimmed = rule == ColumnRule::kTrimmedMean;
    Key lo_key = k[0], hi_key = k[0];
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i == (n - 1) / 2) lo_key = k[i];
      if (i == n / 2) hi_key = k[i];
      if (trimmed && i >= f && i < n - f) sum += key_value(k[i]);
    }
    const double lo_mid = key_value(lo_key);
    result =
        trimmed ? sum / static_cast<double>(n - 2 * f) : ((n % 2 == 1) ? lo_mid : midpoint(lo_mid, key_value(hi_key)));
  }
  if (active) store(out + col, result);
}

// ---------------------------------------------------------------------------
// Any n: a tile of `cols` columns x P rows (P = n rounded up to a power of two,
// padded with a key above NaN) is sorted per column in shared memory by a
// bitonic network, then one thread per column reads out the result.

constexpr int kTileThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    select_tile_kernel(const T* __restrict__ x, int64_t n, int64_t row_stride, int64_t d, T* __restrict__ out,
                       ColumnRule rule, int64_t f, int log2_rows, int log2_cols) {
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
    tile[e] = (row < n && col < d) ? load_key(x + row * row_stride + col) : kPadKey<Key>;
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
    const double r = finish_sorted([&](int64_t t) { return key_value(mine[t << log2_cols]); }, rule, n, f);
    store(out + col0 + threadIdx.x, r);
  }
}

// Dynamic shared memory above the default 48 KB needs the kernel's opt-in.
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

template <int N, typename T>
void launch_registers(const T* x, int64_t n, int64_t row_stride, int64_t d, T* out, ColumnRule rule, int64_t f,
                      cudaStream_t stream) {
  using Key = typename KeyOf<T>::type;
  const size_t smem = rule == ColumnRule::kMeaMed ? N * kRegisterThreads * sizeof(Key) : 0;
  auto kernel = select_registers_kernel<N, T>;
  allow_smem(kernel, static_cast<int64_t>(smem));
  const int64_t blocks = (d + kRegisterThreads - 1) / kRegisterThreads;
  kernel<<<static_cast<unsigned>(blocks), kRegisterThreads, smem, stream>>>(x, n, row_stride, d, out, rule, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_select(const T* x, int64_t n, int64_t row_stride, int64_t d, T* out, ColumnRule rule, int64_t f,
                   cudaStream_t stream) {
  using Key = typename KeyOf<T>::type;
  constexpr int kRegisterLimit = sizeof(Key) == 8 ? kCudaMaxRegisterRows64 : kCudaMaxRegisterRows;
  static_assert(kCudaMaxRegisterRows == 64 && kCudaMaxRegisterRows64 == 32, "register kernels: 8, 16, 32, 64 rows");
  if (n <= 8) return launch_registers<8>(x, n, row_stride, d, out, rule, f, stream);
  if (n <= 16) return launch_registers<16>(x, n, row_stride, d, out, rule, f, stream);
  if (n <= 32) return launch_registers<32>(x, n, row_stride, d, out, rule, f, stream);
  if constexpr (kRegisterLimit >= 64) {
    if (n <= 64) return launch_registers<64>(x, n, row_stride, d, out, rule, f, stream);
  }
  constexpr int64_t max_rows = cuda_max_tile_rows(sizeof(Key));
  TORCH_CHECK_VALUE(n <= max_rows, message("CUDA selection kernels support n <= ", max_rows,
                                           " rows for this dtype, got n=", n, "; move X to the CPU for larger n"));
  int log2_rows = 0;
  while ((int64_t{1} << log2_rows) < n) ++log2_rows;
  int log2_cols = 5;  // 32 columns: one warp reads 128 contiguous bytes of a row
  while (log2_cols > 0 && (int64_t{sizeof(Key)} << (log2_rows + log2_cols)) > kCudaTileSmemBytes) --log2_cols;
  const int64_t smem = int64_t{sizeof(Key)} << (log2_rows + log2_cols);
  auto kernel = select_tile_kernel<T>;
  allow_smem(kernel, smem);
  const int64_t blocks = (d + (int64_t{1} << log2_cols) - 1) >> log2_cols;
  kernel<<<static_cast<unsigned>(blocks), kTileThreads, smem, stream>>>(x, n, row_stride, d, out, rule, f, log2_rows,
                                                                        log2_cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls launch(x, n, row_stride, d, out, stream) for X's dtype on X's device:
// x with unit column stride, out the (d,) result in X's dtype.
template <typename Launch>
at::Tensor over_columns(const at::Tensor& X_in, const Launch& launch) {
  const c10::cuda::CUDAGuard guard(X_in.device());
  const at::Tensor X = unit_column_stride(X_in);
  const int64_t n = X.size(0);
  const int64_t d = X.size(1);
  at::Tensor out = at::empty({d}, X.options());
  if (d == 0) return out;
  const int64_t row_stride = n > 1 ? X.stride(0) : d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "coordinate_cuda", [&] {
    launch(X.const_data_ptr<scalar_t>(), n, row_stride, d, out.mutable_data_ptr<scalar_t>(), stream);
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

// The CUDA side of coordinate_ops.h.
struct Cuda {
  static at::Tensor select(const at::Tensor& X, ColumnRule rule, int64_t f) {
    return over_columns(X, [&](const auto* x, int64_t n, int64_t row_stride, int64_t d, auto* out,
                               cudaStream_t stream) { launch_select(x, n, row_stride, d, out, rule, f, stream); });
  }

  static at::Tensor mean(const at::Tensor& X, const double* w, double wsum) {
    return over_columns(
        X, [&](const auto* x, int64_t n, int64_t row_stride, int64_t d, auto* out, cudaStream_t stream) {
          using T = std::remove_pointer_t<decltype(out)>;
          constexpr int kThreads = 256;
          const int64_t blocks = (d + kThreads - 1) / kThreads;
          mean_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, n, row_stride, d, w, wsum, out);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CUDA, m) {
  m.impl("mean", &mean<Cuda>);
  m.impl("coordinate_median", &coordinate_median<Cuda>);
  m.impl("trimmed_mean", &trimmed_mean<Cuda>);
  m.impl("meamed", &meamed<Cuda>);
  m.impl("mean_around_median", &mean_around_median<Cuda>);
}

}  // namespace robustagg::cuda
