#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace robustagg::cpu {

static Isa best_supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kBaseline;
}

Isa active_isa() {
  static const Isa best = best_supported();
  const char* env = std::getenv("ROBUSTAGG_CPU_ISA");
  Isa wanted = best;
  if (env != nullptr) {
    if (std::strcmp(env, "baseline") == 0) wanted = Isa::kBaseline;
    if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
    if (std::strcmp(env, "avx512") == 0) wanted = Isa::kAvx512;
  }
  return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace robustagg::cpu
