// Checks that make the fused updates behave as PyTorch in-place ops on the
// tensors they write (SPEC 6): done for the whole call before anything is
// written, so that a refused call leaves every tensor as it was.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common.h"

namespace robustagg {

// One tensor list of a call. A list that holds several users' lists one after
// the other (weighted_step_) has `per` > 0 tensors per user and names its
// tensors name[u][i]; the others name them name[i]. A written list whose
// elements are each read before they are written may be passed again as a
// read list (`reads_may_alias`), as a.mul_(a) may in PyTorch.
struct CallList {
  const char* name;
  std::optional<at::TensorList> list;
  bool written;
  size_t per = 0;
  bool reads_may_alias = true;
};

namespace detail {
inline std::string tensor_name(const CallList& l, size_t k) {
  if (l.per == 0) return message(l.name, "[", static_cast<long long>(k), "]");
  return message(l.name, "[", static_cast<long long>(k / l.per), "][", static_cast<long long>(k % l.per), "]");
}

// A tensor of a call and the addresses it spans.
struct Span {
  const char* begin;
  const char* end;
  const CallList* list;
  size_t index;
  const at::Tensor* tensor;
  size_t position() const { return list->per == 0 ? index : index % list->per; }
};

// Whether two overlapping spans may be passed together: a read tensor that is
// the very view of the tensor written at the same position.
inline bool may_overlap(const Span& a, const Span& b) {
  if (a.list->written == b.list->written) return !a.list->written;
  const Span& w = a.list->written ? a : b;
  return w.list->reads_may_alias && a.position() == b.position() && a.begin == b.begin &&
         a.tensor->sizes() == b.tensor->sizes() && a.tensor->strides() == b.tensor->strides() &&
         a.tensor->element_size() == b.tensor->element_size();
}
}  // namespace detail

// No tensor of the call may require grad while grad mode is on: the ops have
// no derivative, so autograd would see neither the write nor what it read
// (optimizers run under torch.no_grad(), where leaf parameters may be
// written, as with add_). For every tensor of the written lists:
//  * no two of its elements may share an address (an expanded view; views
//    whose strides overlap otherwise are found when they span fewer
//    addresses than elements);
//  * it may share memory with no other tensor of the call, except as above,
//    or the result would depend on the order of the element updates. The
//    test is on each tensor's address range, so interleaved views of one
//    buffer (columns of a matrix) count as sharing memory.
// Then bumps its version counter, as an in-place op does, so that autograd
// refuses a backward through a value the op overwrote. Every list is on one
// device (checked before), so addresses compare.
inline void check_writes(std::initializer_list<CallList> lists, const char* rule) {
  std::vector<detail::Span> spans;
  for (const CallList& l : lists) {
    if (!l.list.has_value()) continue;
    for (size_t k = 0; k < l.list->size(); ++k) {
      const at::Tensor& t = (*l.list)[k];
      TORCH_CHECK(!(c10::GradMode::is_enabled() && t.requires_grad()),
                  message(rule, ": ", detail::tensor_name(l, k),
                          " requires grad and grad mode is on; the update has no derivative, so autograd would "
                          "not see it: call it under torch.no_grad() or pass a detached tensor"));
      if (t.numel() == 0) continue;
      int64_t extent = 1;
      for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
      // Fewer addresses than elements: some elements share one.
      TORCH_CHECK_VALUE(!l.written || (at::has_internal_overlap(t) != at::MemOverlap::Yes && extent >= t.numel()),
                        message(rule, ": ", detail::tensor_name(l, k),
                                " has several elements at one address (an expanded view) and cannot be written; "
                                "clone() it"));
      const char* begin = static_cast<const char*>(t.const_data_ptr());
      spans.push_back({begin, begin + extent * static_cast<int64_t>(t.element_size()), &l, k, &t});
    }
  }
  std::sort(spans.begin(), spans.end(), [](const detail::Span& a, const detail::Span& b) { return a.begin < b.begin; });
  // Sweep by start address, against the spans that still reach it (few:
  // tensors rarely share memory).
  std::vector<const detail::Span*> open;
  for (const detail::Span& s : spans) {
    open.erase(std::remove_if(open.begin(), open.end(), [&](const detail::Span* o) { return o->end <= s.begin; }),
               open.end());
    for (const detail::Span* o : open) {
      TORCH_CHECK_VALUE(
          detail::may_overlap(*o, s),
          message(rule, ": ", detail::tensor_name(*o->list, o->index), " and ", detail::tensor_name(*s.list, s.index),
                  " share memory; a tensor the update writes may share memory with no other tensor "
                  "of the call but itself as a read argument at the same position (clone() one)"));
    }
    open.push_back(&s);
  }
  for (const CallList& l : lists) {
    if (!l.written || !l.list.has_value()) continue;
    for (const at::Tensor& t : *l.list) t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace robustagg
