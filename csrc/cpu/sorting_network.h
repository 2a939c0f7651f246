// Comparator lists for the lane-wise CPU selection kernel.
#pragma once

#include <cstdint>
#include <vector>

namespace robustagg::cpu {

// Batcher's odd-even merge sort for any n: the power-of-two network with every
// comparator that touches an index >= n removed (those indices hold +infinity
// conceptually, so such comparators never move a value). Pairs (lo, hi) with
// lo < hi; after the network, position t holds the t-th smallest value.
// Knuth, TAOCP vol. 3, 5.3.4; Batcher, "Sorting networks and their
// applications", AFIPS 1968.
inline std::vector<int32_t> batcher_network(int64_t n) {
  std::vector<int32_t> pairs;
  for (int64_t p = 1; p < n; p += p) {
    for (int64_t k = p; k >= 1; k /= 2) {
      for (int64_t j = k % p; j + k < n; j += 2 * k) {
        for (int64_t i = 0; i < k && i + j + k < n; ++i) {
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
            pairs.push_back(static_cast<int32_t>(i + j));
            pairs.push_back(static_cast<int32_t>(i + j + k));
          }
        }
      }
    }
  }
  return pairs;
}

// Drops comparators that cannot affect the positions in [first, last): walking
// backwards, a comparator is kept iff one of its outputs is still needed, and
// then both of its inputs become needed.
inline std::vector<int32_t> prune_network(const std::vector<int32_t>& pairs, int64_t n, int64_t first,
                                          int64_t last) {
  std::vector<char> needed(static_cast<size_t>(n), 0);
  for (int64_t t = first; t < last; ++t) needed[static_cast<size_t>(t)] = 1;
  std::vector<int32_t> kept;
  for (size_t c = pairs.size(); c >= 2; c -= 2) {
    const int32_t lo = pairs[c - 2];
    const int32_t hi = pairs[c - 1];
    if (needed[static_cast<size_t>(lo)] || needed[static_cast<size_t>(hi)]) {
      needed[static_cast<size_t>(lo)] = needed[static_cast<size_t>(hi)] = 1;
      kept.push_back(hi);
      kept.push_back(lo);
    }
  }
  return std::vector<int32_t>(kept.rbegin(), kept.rend());
}

}  // namespace robustagg::cpu
