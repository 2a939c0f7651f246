#include "sorting_network.h"

#include <cstddef>

namespace robustagg {

std::vector<int32_t> batcher_network(int64_t n) {
  std::vector<int32_t> pairs;
  batcher_pairs(n, [&pairs](int64_t lo, int64_t hi) {
    pairs.push_back(static_cast<int32_t>(lo));
    pairs.push_back(static_cast<int32_t>(hi));
  });
  return pairs;
}

std::vector<int32_t> prune_network(const std::vector<int32_t>& pairs, int64_t n, int64_t first, int64_t last) {
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

}  // namespace robustagg
