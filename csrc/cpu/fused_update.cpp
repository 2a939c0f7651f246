// CPU kernels of the fused multi-tensor updates (SPEC 6): one call updates
// whole lists of tensors in place, each element of each list read once and
// each written element written once. The element arithmetic is shared with
// the CUDA kernels (fused_update.h).
//
// The tensors are cut into pieces of kPiece elements that at::parallel_for
// spreads over the threads, so many small tensors and one large tensor both
// keep every thread busy, and the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "fused_update.h"

namespace robustagg::cpu {
namespace {

constexpr int64_t kPiece = int64_t{1} << 14;

// Applies body(std::array<scalar_t*, K> pointers, count) to every piece of K
// parallel lists; an absent list (nullopt) gives null pointers. The first
// `writes` lists are written: a strided tensor is updated in a contiguous
// copy that is written back.
template <size_t K, typename Body>
void for_each_piece(const std::array<std::optional<at::TensorList>, K>& lists, size_t writes, const Body& body) {
  struct Piece {
    size_t group;
    int64_t begin, end;
  };
  const size_t count = lists[0]->size();
  std::vector<std::array<at::Tensor, K>> work(count);
  std::vector<Piece> pieces;
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < K; ++k) {
      if (lists[k].has_value()) work[i][k] = (*lists[k])[i].contiguous();
    }
    const int64_t numel = work[i][0].numel();
    for (int64_t b = 0; b < numel; b += kPiece) pieces.push_back({i, b, std::min(b + kPiece, numel)});
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Piece& piece = pieces[p];
      const auto& group = work[piece.group];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, group[0].scalar_type(), "fused_update", [&] {
        std::array<scalar_t*, K> ptr;
        for (size_t k = 0; k < K; ++k) {
          ptr[k] = group[k].defined() ? group[k].template data_ptr<scalar_t>() + piece.begin : nullptr;
        }
        body(ptr, piece.end - piece.begin);
      });
    }
  });
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < writes; ++k) {
      if (!work[i][k].is_same((*lists[k])[i])) (*lists[k])[i].copy_(work[i][k]);
    }
  }
}

template <typename Ptr>
using Elem = std::remove_pointer_t<typename Ptr::value_type>;

void momentum_update_cpu(at::TensorList buffers, at::TensorList grads, double beta) {
  check_momentum_update(buffers, grads, beta);
  for_each_piece<2>({buffers, grads}, 1, [&](auto ptr, int64_t n) {
    using Acc = at::opmath_type<Elem<decltype(ptr)>>;
    const Acc keep = static_cast<Acc>(beta), take = static_cast<Acc>(1.0 - beta);
    auto* m = ptr[0];
    const auto* g = ptr[1];
    for (int64_t i = 0; i < n; ++i) m[i] = momentum_value(m[i], g[i], keep, take);
  });
}

void client_step_cpu(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                     std::optional<at::TensorList> control, std::optional<at::TensorList> momentum, double lr,
                     double coef_grad, double coef_anchor, double coef_control, double coef_momentum) {
  check_client_step(params, grads, anchor_grads, control, momentum, lr, coef_grad, coef_anchor, coef_control,
                    coef_momentum);
  with_flags(
      [&](auto A, auto C, auto M) {
        for_each_piece<5>({params, grads, anchor_grads, control, momentum}, 1, [&](auto ptr, int64_t n) {
          using T = Elem<decltype(ptr)>;
          using Acc = at::opmath_type<T>;
          constexpr bool kA = decltype(A)::value, kC = decltype(C)::value, kM = decltype(M)::value;
          const ClientCoefs<Acc> k{static_cast<Acc>(lr), static_cast<Acc>(coef_grad), static_cast<Acc>(coef_anchor),
                                   static_cast<Acc>(coef_control), static_cast<Acc>(coef_momentum)};
          auto* p = ptr[0];
          const auto *g = ptr[1], *a = ptr[2], *c = ptr[3], *m = ptr[4];
          for (int64_t i = 0; i < n; ++i) {
            p[i] = client_step_value<kA, kC, kM>(p[i], g[i], kA ? a[i] : T(0), kC ? c[i] : T(0), kM ? m[i] : T(0), k);
          }
        });
      },
      anchor_grads.has_value(), control.has_value(), momentum.has_value());
}

void adam_client_step_cpu(at::TensorList params, at::TensorList grads, std::optional<at::TensorList> anchor_grads,
                          std::optional<at::TensorList> control, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                          double lr, double beta1, double beta2, double eps, int64_t step) {
  check_adam_client_step(params, grads, anchor_grads, control, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step);
  const AdamScalars s = adam_scalars(lr, beta1, beta2, eps, step);
  with_flags(
      [&](auto A, auto C) {
        for_each_piece<6>({params, grads, anchor_grads, control, exp_avg, exp_avg_sq}, 1, [&](auto ptr, int64_t n) {
          using T = Elem<decltype(ptr)>;
          constexpr bool kA = decltype(A)::value, kC = decltype(C)::value;
          const AdamCoefs<at::opmath_type<T>> k = s.as<at::opmath_type<T>>();
          auto* p = ptr[0];
          const auto *g = ptr[1], *a = ptr[2], *c = ptr[3], *m = ptr[4], *v = ptr[5];
          for (int64_t i = 0; i < n; ++i) {
            p[i] = adam_client_value<kA, kC>(p[i], g[i], kA ? a[i] : T(0), kC ? c[i] : T(0), m[i], v[i], k);
          }
        });
      },
      anchor_grads.has_value(), control.has_value());
}

void adam_stats_update_cpu(at::TensorList exp_avg, at::TensorList exp_avg_sq, at::TensorList grads, double beta1,
                           double beta2) {
  check_adam_stats_update(exp_avg, exp_avg_sq, grads, beta1, beta2);
  for_each_piece<3>({exp_avg, exp_avg_sq, grads}, 2, [&](auto ptr, int64_t n) {
    using Acc = at::opmath_type<Elem<decltype(ptr)>>;
    const Acc b1 = static_cast<Acc>(beta1), t1 = static_cast<Acc>(1.0 - beta1);
    const Acc b2 = static_cast<Acc>(beta2), t2 = static_cast<Acc>(1.0 - beta2);
    auto *m = ptr[0], *v = ptr[1];
    const auto* g = ptr[2];
    for (int64_t i = 0; i < n; ++i) adam_stats_value(m[i], v[i], g[i], b1, t1, b2, t2);
  });
}

void mvr_update_cpu(at::TensorList momentum, at::TensorList grads, at::TensorList prev_grads, double a) {
  check_mvr_update(momentum, grads, prev_grads, a);
  for_each_piece<3>({momentum, grads, prev_grads}, 1, [&](auto ptr, int64_t n) {
    using Acc = at::opmath_type<Elem<decltype(ptr)>>;
    const Acc take = static_cast<Acc>(a), keep = static_cast<Acc>(1.0 - a);
    auto* m = ptr[0];
    const auto *g = ptr[1], *h = ptr[2];
    for (int64_t i = 0; i < n; ++i) m[i] = mvr_value(m[i], g[i], h[i], take, keep);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("momentum_update_", &momentum_update_cpu);
  m.impl("client_step_", &client_step_cpu);
  m.impl("adam_client_step_", &adam_client_step_cpu);
  m.impl("adam_stats_update_", &adam_stats_update_cpu);
  m.impl("mvr_update_", &mvr_update_cpu);
}

}  // namespace robustagg::cpu
