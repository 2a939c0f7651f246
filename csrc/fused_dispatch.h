// How the fused updates reach their kernels, shared by the CPU and CUDA
// kernels: which optional lists are present, as compile-time flags, and the
// lists in the kernels' order as contiguous tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "fused_arithmetic.h"

namespace robustagg {

// Parallel tensor lists of one call; an absent optional list is nullopt.
using TensorLists = std::vector<std::optional<at::TensorList>>;

// work[i][k]: tensor i of list k, contiguous (a copy of a strided tensor;
// undefined for an absent list).
inline std::vector<std::vector<at::Tensor>> contiguous_tensors(const TensorLists& lists) {
  const size_t count = lists[0]->size();
  std::vector<std::vector<at::Tensor>> work(count, std::vector<at::Tensor>(lists.size()));
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < lists.size(); ++k) {
      if (lists[k].has_value()) work[i][k] = (*lists[k])[i].contiguous();
    }
  }
  return work;
}

// The first `writes` lists are written: a strided tensor was updated in its
// contiguous copy, which is copied back.
inline void write_back(const TensorLists& lists, size_t writes, const std::vector<std::vector<at::Tensor>>& work) {
  for (size_t i = 0; i < work.size(); ++i) {
    for (size_t k = 0; k < writes; ++k) {
      if (!work[i][k].is_same((*lists[k])[i])) (*lists[k])[i].copy_(work[i][k]);
    }
  }
}

// Calls f(std::bool_constant<flags>{}...) with each runtime flag as a compile-time constant.
template <typename F>
void with_flags(F&& f) {
  f();
}
template <typename F, typename... Flags>
void with_flags(F&& f, bool first, Flags... rest) {
  if (first) {
    with_flags([&](auto... done) { f(std::true_type{}, done...); }, rest...);
  } else {
    with_flags([&](auto... done) { f(std::false_type{}, done...); }, rest...);
  }
}

// Calls f(std::bool_constant<decay>{}, std::integral_constant<MaskKind, kind>{}): both as compile-time flags.
template <typename F>
void with_mask_kind(MaskKind kind, bool decay, F&& f) {
  const auto run = [&](auto kind_tag) { with_flags([&](auto wd) { f(wd, kind_tag); }, decay); };
  switch (kind) {
    case MaskKind::kNone:
      return run(std::integral_constant<MaskKind, MaskKind::kNone>{});
    case MaskKind::kBool:
      return run(std::integral_constant<MaskKind, MaskKind::kBool>{});
    case MaskKind::kPacked:
      return run(std::integral_constant<MaskKind, MaskKind::kPacked>{});
  }
}

// weighted_step_'s lists in the kernels' order: params, then the N corrections
// (when present), then the N + 1 users' grads; the first `writes` are written.
struct WeightedLists {
  TensorLists lists;
  size_t writes;
};

inline WeightedLists weighted_step_lists(at::TensorList params, at::TensorList grads,
                                         const std::optional<at::TensorList>& corrections, int64_t collaborators) {
  const size_t count = params.size();
  WeightedLists out{{params}, 1};
  if (corrections.has_value()) {
    for (int64_t u = 0; u < collaborators; ++u) out.lists.emplace_back(corrections->slice(u * count, count));
    out.writes += collaborators;
  }
  for (int64_t u = 0; u <= collaborators; ++u) out.lists.emplace_back(grads.slice(u * count, count));
  return out;
}

}  // namespace robustagg
