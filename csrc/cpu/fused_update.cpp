// CPU kernels of the fused multi-tensor updates (SPEC 6): one call updates a
// whole list of tensors in place, each element read and written once.
//
// momentum_update_: buffers[i] <- beta * buffers[i] + (1 - beta) * grads[i].
// The tensors are cut into pieces of kPiece elements that at::parallel_for
// spreads over the threads, so many small tensors and one large tensor both
// keep every thread busy. Arithmetic is in float32 for float32/half/bfloat16
// and float64 for float64, each product and the sum rounded once (no FMA:
// the build passes -ffp-contract=off), which is what the same expression
// gives in PyTorch.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fused_update.h"

namespace robustagg::cpu {
namespace {

constexpr int64_t kPiece = int64_t{1} << 14;

struct Piece {
  size_t pair;
  int64_t begin, end;
};

template <typename T>
void momentum_piece(T* m, const T* g, int64_t count, double beta) {
  using Acc = at::opmath_type<T>;
  const Acc keep = static_cast<Acc>(beta);
  const Acc take = static_cast<Acc>(1.0 - beta);
  for (int64_t i = 0; i < count; ++i) m[i] = momentum_value(m[i], g[i], keep, take);
}

void momentum_update_cpu(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  // Strided buffers are updated in a contiguous copy that is written back.
  std::vector<at::Tensor> work(buffers.size()), source(grads.size());
  std::vector<Piece> pieces;
  for (size_t i = 0; i < buffers.size(); ++i) {
    work[i] = buffers[i].contiguous();
    source[i] = grads[i].contiguous();
    for (int64_t b = 0; b < work[i].numel(); b += kPiece) {
      pieces.push_back({i, b, std::min(b + kPiece, work[i].numel())});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Piece& piece = pieces[p];
      const at::Tensor& m = work[piece.pair];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "momentum_update_", [&] {
        momentum_piece(m.data_ptr<scalar_t>() + piece.begin, source[piece.pair].data_ptr<scalar_t>() + piece.begin,
                       piece.end - piece.begin, beta);
      });
    }
  });
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (!work[i].is_same(buffers[i])) buffers[i].copy_(work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) { m.impl("momentum_update_", &momentum_update_cpu); }

}  // namespace robustagg::cpu
