#include "backend/cpu/isa.h"

#include <cstdio>

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include <oneapi/dnnl/dnnl.h>

#include "core/error.h"

namespace fluxpipe::cpu {
namespace {

Isa detect() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::generic;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512dq")) {
    return Isa::avx2;
  }
  if (!__builtin_cpu_supports("avx512bf16")) return Isa::avx512;
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return Isa::avx512bf16;
  // AMX needs the kernel's permission to use the tile state (Linux 5.16+), asked once per process.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? Isa::amx : Isa::avx512bf16;
}

Isa parse(const std::string& s, Isa best) {
  for (Isa level : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16, Isa::amx}) {
    if (s == isa_name(level)) {
      if (static_cast<int>(level) > static_cast<int>(best)) {
        throw UserError(std::string("[cpu] FLUXPIPE_ISA=") + s + ": this CPU does not have it (the most it offers is " +
                        isa_name(best) + ")");
      }
      return level;
    }
  }
  throw UserError("[cpu] FLUXPIPE_ISA='" + s + "' is not one of amx, avx512bf16, avx512, avx2, generic");
}

// -1: not chosen yet.
std::atomic<int> g_level{-1};
std::mutex g_mu;

}  // namespace

Isa detected_isa() {
  static const Isa v = detect();
  return v;
}

Isa active_isa() {
  int v = g_level.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Isa>(v);
  std::lock_guard lock(g_mu);
  if (g_level.load() < 0) {
    const char* env = std::getenv("FLUXPIPE_ISA");
    Isa level = env && *env ? parse(env, detected_isa()) : detected_isa();
    g_level.store(static_cast<int>(level));
  }
  return static_cast<Isa>(g_level.load());
}

const char* isa_name(Isa level) {
  switch (level) {
    case Isa::generic: return "generic";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::amx: return "amx";
  }
  return "generic";
}

void isa_set_for_tests(Isa level) {
  if (static_cast<int>(level) > static_cast<int>(detected_isa())) {
    throw UserError(std::string("[cpu] this CPU has no ") + isa_name(level));
  }
  g_level.store(static_cast<int>(level));
}

void isa_apply_to_onednn() {
  static std::once_flag once;
  std::call_once(once, [] {
    dnnl_cpu_isa_t cap = dnnl_cpu_isa_all;
    switch (active_isa()) {
      case Isa::generic: cap = dnnl_cpu_isa_sse41; break;
      case Isa::avx2: cap = dnnl_cpu_isa_avx2; break;
      case Isa::avx512: cap = dnnl_cpu_isa_avx512_core; break;
      case Isa::avx512bf16: cap = dnnl_cpu_isa_avx512_core_bf16; break;
      case Isa::amx: cap = dnnl_cpu_isa_all; break;
    }
    // Fails only when oneDNN dispatched before this call (something made a primitive without
    // our wrappers): then it keeps the level it chose, and a measurement under FLUXPIPE_ISA
    // would silently run faster instructions, so say so.
    if (dnnl_set_max_cpu_isa(cap) != dnnl_success && cap != dnnl_cpu_isa_all) {
      std::fprintf(stderr, "fluxpipe: warning: oneDNN was used before FLUXPIPE_ISA could hold it to %s; it keeps its own level\n",
                   isa_name(active_isa()));
    }
  });
}

}  // namespace fluxpipe::cpu
