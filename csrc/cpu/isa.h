// Run-time choice of the instruction set for the CPU selection kernels. The
// same kernel source is compiled once per instruction set (coordinate_isa_*.cpp),
// so the extension runs on any x86-64 CPU and uses AVX2 / AVX-512 where present.
#pragma once

namespace robustagg::cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU supports, lowered by the environment
// variable ROBUSTAGG_CPU_ISA=baseline|avx2|avx512 (never raised above what the
// CPU supports).
Isa active_isa();
const char* isa_name(Isa isa);

}  // namespace robustagg::cpu
