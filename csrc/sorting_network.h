// Batcher's odd-even merge sort network for any n, shared by the CPU and CUDA
// kernels: at compile time for fixed sizes (kStaticNetwork), and at run time
// on the CPU for large n (batcher_network, pruned by prune_network).
// It is the power-of-two network with every comparator that touches an index
// >= n removed: those indices hold +infinity conceptually, so such
// comparators never move a value. Comparators (lo, hi), lo < hi, come in an
// order that sorts ascending. Knuth, TAOCP vol. 3, 5.3.4, exercise 5.3.4-32;
// Batcher, "Sorting networks and their applications", AFIPS 1968.
//
// The per-ISA kernel files include this header, so it instantiates no library
// code: the run-time lists are defined in sorting_network.cpp.
#pragma once

#include <cstdint>
#include <vector>

namespace robustagg {

template <typename Emit>
constexpr void batcher_pairs(int64_t n, Emit&& emit) {
  for (int64_t p = 1; p < n; p += p)
    for (int64_t k = p; k >= 1; k /= 2)
      for (int64_t j = k % p; j + k < n; j += 2 * k)
        for (int64_t i = 0; i < k && i + j + k < n; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) emit(i + j, i + j + k);
}

// The network on N elements as compile-time arrays.
template <int N>
struct StaticNetwork {
  static constexpr int count() {
    int c = 0;
    batcher_pairs(N, [&c](int64_t, int64_t) { ++c; });
    return c;
  }
  static constexpr int kCount = count();
  int lo[kCount > 0 ? kCount : 1] = {};
  int hi[kCount > 0 ? kCount : 1] = {};
};

template <int N>
constexpr StaticNetwork<N> make_static_network() {
  StaticNetwork<N> net{};
  int c = 0;
  batcher_pairs(N, [&](int64_t lo, int64_t hi) {
    net.lo[c] = static_cast<int>(lo);
    net.hi[c] = static_cast<int>(hi);
    ++c;
  });
  return net;
}

template <int N>
constexpr StaticNetwork<N> kStaticNetwork = make_static_network<N>();

// The comparators of the network on n elements as a flat list of pairs.
std::vector<int32_t> batcher_network(int64_t n);

// Drops comparators that cannot affect the positions in [first, last): walking
// backwards, a comparator is kept iff one of its outputs is still needed, and
// then both of its inputs become needed.
std::vector<int32_t> prune_network(const std::vector<int32_t>& pairs, int64_t n, int64_t first, int64_t last);

}  // namespace robustagg
