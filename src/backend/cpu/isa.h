// CPU backend: which instruction sets the kernels may use — what this CPU has, capped by the
// FLUXPIPE_ISA switch, so that every path can be run and measured on any machine that has it.
//
//   FLUXPIPE_ISA=amx | avx512bf16 | avx512 | avx2 | generic     (unset: the best this CPU has)
//
// Each level includes the ones below it: amx = AMX BF16 tiles + AVX-512 BF16; avx512bf16 =
// AVX-512 F/BW/DQ + vdpbf16ps; avx512 = AVX-512 F/BW/DQ; avx2 = AVX2 + FMA; generic = baseline
// x86-64. Our kernels ask isa_at_least(); oneDNN is held to the same level (dnnl_set_max_cpu_isa
// before its first primitive), so a benchmark under FLUXPIPE_ISA=avx2 runs no AVX-512 anywhere.
// Asking for a level this CPU lacks is an error naming both (never a silent fallback).
// Thread-safety: the level is fixed at first use (tests may change it with isa_set_for_tests).
#pragma once

namespace fluxpipe::cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3, amx = 4 };

// The best level this CPU (and, for AMX, the kernel's permission) offers.
Isa detected_isa();
// The level in force: detected_isa() capped by FLUXPIPE_ISA. Throws UserError for an unknown
// name or a level above detected_isa().
Isa active_isa();
inline bool isa_at_least(Isa level) { return static_cast<int>(active_isa()) >= static_cast<int>(level); }
const char* isa_name(Isa level);

// Tests and benchmarks: run the kernels at `level` (REQUIRES level <= detected_isa()). oneDNN
// keeps the level it was first held to.
void isa_set_for_tests(Isa level);

// Holds oneDNN to the active level; called by the oneDNN wrappers before their first primitive.
void isa_apply_to_onednn();

}  // namespace fluxpipe::cpu
