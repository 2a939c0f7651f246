// CPU kernels of the fused multi-tensor updates (SPEC 6): one call updates
// whole lists of tensors in place, each element of each list read once and
// each written element written once. The ops themselves are written once for
// both devices (fused_ops.h); this file visits their elements.
//
// The tensors are cut into pieces of kFusedCpuPiece elements that
// at::parallel_for spreads over the threads, so many small tensors and one
// large tensor both keep every thread busy, and the result does not depend on
// the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <vector>

#include "fused_ops.h"
#include "kernel_constants.h"

namespace robustagg::cpu {
namespace {

// Ops that loop over many lists at once work through a piece in blocks of
// kBlock elements, so that every list is read in one sequential pass while
// the block's partial results stay in registers / L1.
constexpr int64_t kBlock = kFusedCpuBlock;

// Elements [begin, begin + size) of tensor `tensor` of the lists.
struct Piece {
  size_t tensor;
  int64_t begin, size;
};

// Applies body(pointers, piece) to every piece of the parallel lists, where
// pointers[k] points at the piece's first element in list k (null for an
// absent list). The lists share the dtype of lists[0]; the first `writes`
// lists are written (fused_dispatch.h's write_back).
template <typename Body>
void for_each_piece(const TensorLists& lists, size_t writes, const Body& body) {
  const size_t depth = lists.size();
  const std::vector<std::vector<at::Tensor>> work = contiguous_tensors(lists);
  std::vector<Piece> pieces;
  for (size_t i = 0; i < work.size(); ++i) {
    const int64_t numel = work[i][0].numel();
    for (int64_t b = 0; b < numel; b += kFusedCpuPiece) pieces.push_back({i, b, std::min(kFusedCpuPiece, numel - b)});
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Piece& piece = pieces[p];
      const auto& group = work[piece.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, group[0].scalar_type(), "fused_update", [&] {
        c10::SmallVector<scalar_t*, 8> ptr(depth, nullptr);
        for (size_t k = 0; k < depth; ++k) {
          if (group[k].defined()) ptr[k] = group[k].template data_ptr<scalar_t>() + piece.begin;
        }
        body(ptr, piece);
      });
    }
  });
  write_back(lists, writes, work);
}

template <typename Ptr>
using Elem = std::remove_pointer_t<typename std::remove_reference_t<Ptr>::value_type>;

// One collaborator's term on element j: u + a g (+ c, then c's update).
template <bool kCorrected, typename T, typename Acc>
inline Acc add_term(Acc u, T g0, T g, T* c, Acc a, Acc keep, Acc take) {
  if constexpr (kCorrected) {
    const T old = *c;
    *c = correction_value(old, g0, g, a, keep, take);
    return collaborator_term(u, g, a) + static_cast<Acc>(old);
  } else {
    return collaborator_term(u, g, a);
  }
}

// Adds the terms of G <= 4 consecutive collaborators to a block's u in one
// pass, so that u is loaded and stored once per four collaborators instead of
// once per collaborator (many read streams already cost this CPU bandwidth;
// the extra L1 traffic of u made the step compute-bound). The order of the
// additions is that of the contract. __restrict__: a correction is written
// and aliases nothing else; gradients may alias each other (they are only read).
template <int G, bool kCorrected, typename T, typename Acc>
void add_terms(Acc* __restrict__ u, const T* __restrict__ g0, const T* __restrict__ g1, const T* __restrict__ g2,
               const T* __restrict__ g3, const T* __restrict__ g4, T* __restrict__ c1, T* __restrict__ c2,
               T* __restrict__ c3, T* __restrict__ c4, const Acc* a, int64_t m, Acc keep, Acc take) {
  const Acc a1 = a[0], a2 = G > 1 ? a[1] : Acc(0), a3 = G > 2 ? a[2] : Acc(0), a4 = G > 3 ? a[3] : Acc(0);
  for (int64_t j = 0; j < m; ++j) {
    const T h = g0[j];
    Acc uj = add_term<kCorrected>(u[j], h, g1[j], c1 + j, a1, keep, take);
    if constexpr (G > 1) uj = add_term<kCorrected>(uj, h, g2[j], c2 + j, a2, keep, take);
    if constexpr (G > 2) uj = add_term<kCorrected>(uj, h, g3[j], c3 + j, a3, keep, take);
    if constexpr (G > 3) uj = add_term<kCorrected>(uj, h, g4[j], c4 + j, a4, keep, take);
    u[j] = uj;
  }
}

// kUnpacked[byte]: the byte's 8 bits as 8 bytes of 0 / 1, bit 0 first (little endian).
constexpr std::array<uint64_t, 256> unpack_table() {
  std::array<uint64_t, 256> table{};
  for (int byte = 0; byte < 256; ++byte) {
    for (int t = 0; t < 8; ++t) table[byte] |= static_cast<uint64_t>((byte >> t) & 1) << (8 * t);
  }
  return table;
}
constexpr std::array<uint64_t, 256> kUnpacked = unpack_table();

// Stores `active ? fresh : old` by bits, so that inactive elements keep their
// bits (NaN payloads included) and the loop has no branch to vectorise around.
template <typename T>
inline T select_bits(uint8_t active, T fresh, T old) {
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  const Bits on = static_cast<Bits>(Bits{0} - static_cast<Bits>(active));
  return c10::bit_cast<T>(static_cast<Bits>((c10::bit_cast<Bits>(fresh) & on) | (c10::bit_cast<Bits>(old) & ~on)));
}

// The CPU side of fused_ops.h.
struct Cpu {
  template <int K, typename Make>
  static void run(const TensorLists& lists, size_t writes, const Make& make) {
    for_each_piece(lists, writes, [&](auto& ptr, const Piece& piece) {
      using T = Elem<decltype(ptr)>;
      const auto op = make(T{});
      T* p[K];
      for (int k = 0; k < K; ++k) p[k] = ptr[k];
      for (int64_t i = 0; i < piece.size; ++i) op(p, i);
    });
  }

  template <bool kCorrected>
  static void weighted_step(const WeightedLists& work, at::ArrayRef<double> weights, double lr, double beta) {
    const int64_t collaborators = static_cast<int64_t>(weights.size()) - 1;
    for_each_piece(work.lists, work.writes, [&](auto& ptr, const Piece& piece) {
      using T = Elem<decltype(ptr)>;
      using Acc = at::opmath_type<T>;
      const Acc step = static_cast<Acc>(lr), keep = static_cast<Acc>(1.0 - beta), take = static_cast<Acc>(beta);
      T* p = ptr[0];
      T* const* c = ptr.data() + 1;
      T* const* g = ptr.data() + (kCorrected ? 1 + collaborators : 1);
      c10::SmallVector<Acc, 16> a(collaborators + 1);
      for (int64_t i = 0; i <= collaborators; ++i) a[i] = static_cast<Acc>(weights[i]);
      for (int64_t b = 0; b < piece.size; b += kBlock) {
        const int64_t m = std::min(kBlock, piece.size - b);
        const T* g0 = g[0] + b;
        Acc u[kBlock];
        for (int64_t j = 0; j < m; ++j) u[j] = a[0] * static_cast<Acc>(g0[j]);
        for (int64_t i = 1; i <= collaborators; i += 4) {
          const int64_t group = std::min<int64_t>(4, collaborators + 1 - i);
          // Slots past the group repeat its first collaborator; they are not read.
          const auto gp = [&](int64_t q) { return g[i + (q < group ? q : 0)] + b; };
          const auto cp = [&](int64_t q) { return kCorrected ? c[i - 1 + (q < group ? q : 0)] + b : nullptr; };
          const auto run = [&](auto size) {
            add_terms<decltype(size)::value, kCorrected>(u, g0, gp(0), gp(1), gp(2), gp(3), cp(0), cp(1), cp(2), cp(3),
                                                         a.data() + i, m, keep, take);
          };
          switch (group) {
            case 1:
              run(std::integral_constant<int, 1>{});
              break;
            case 2:
              run(std::integral_constant<int, 2>{});
              break;
            case 3:
              run(std::integral_constant<int, 3>{});
              break;
            default:
              run(std::integral_constant<int, 4>{});
              break;
          }
        }
        for (int64_t j = 0; j < m; ++j) p[b + j] = descend(p[b + j], step, u[j]);
      }
    });
  }

  template <bool kWD, MaskKind kKind>
  static void masked_sgd_step(at::TensorList params, at::TensorList momentum, at::TensorList grads,
                              const std::optional<at::TensorList>& masks, double lr, double mu, double weight_decay) {
    std::vector<at::Tensor> mask_bytes;
    if (masks.has_value()) {
      for (const at::Tensor& mask : *masks) mask_bytes.push_back(mask.contiguous());
    }
    for_each_piece({params, momentum, grads}, 2, [&](auto& ptr, const Piece& piece) {
      using T = Elem<decltype(ptr)>;
      using Acc = at::opmath_type<T>;
      const Acc step = static_cast<Acc>(lr), keep = static_cast<Acc>(mu), wd = static_cast<Acc>(weight_decay);
      T* __restrict__ p = ptr[0];
      T* __restrict__ m = ptr[1];
      const T* __restrict__ g = ptr[2];
      if constexpr (kKind == MaskKind::kNone) {
        for (int64_t i = 0; i < piece.size; ++i) sgd_momentum_value<kWD>(p[i], m[i], g[i], step, keep, wd, p[i], m[i]);
      } else {
        // Pieces and blocks start at multiples of 8 elements, so a packed piece starts at a whole byte.
        const auto* bytes = static_cast<const uint8_t*>(mask_bytes[piece.tensor].data_ptr());
        const uint8_t* mask = bytes + (kKind == MaskKind::kPacked ? piece.begin / 8 : piece.begin);
        for (int64_t b = 0; b < piece.size; b += kBlock) {
          const int64_t n = std::min(kBlock, piece.size - b);
          uint8_t active[kBlock];
          if constexpr (kKind == MaskKind::kPacked) {
            for (int64_t k = 0; k < (n + 7) / 8; ++k) std::memcpy(active + 8 * k, &kUnpacked[mask[b / 8 + k]], 8);
          } else {
            for (int64_t j = 0; j < n; ++j) active[j] = mask[b + j] != 0;
          }
          for (int64_t j = 0; j < n; ++j) {
            const int64_t i = b + j;
            T p1, m1;
            sgd_momentum_value<kWD>(p[i], m[i], g[i], step, keep, wd, p1, m1);
            p[i] = select_bits(active[j], p1, p[i]);
            m[i] = select_bits(active[j], m1, m[i]);
          }
        }
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(robustagg, CPU, m) {
  m.impl("momentum_update_", &momentum_update<Cpu>);
  m.impl("client_step_", &client_step<Cpu>);
  m.impl("adam_client_step_", &adam_client_step<Cpu>);
  m.impl("adam_stats_update_", &adam_stats_update<Cpu>);
  m.impl("mvr_update_", &mvr_update<Cpu>);
  m.impl("weighted_step_", &weighted_step<Cpu>);
  m.impl("masked_sgd_step_", &masked_sgd_step<Cpu>);
}

}  // namespace robustagg::cpu
