// `fluxpipe devices`: the CPU as the engine sees it (the CUDA backend is not built yet).
#include <cstdio>
#include <fstream>
#include <string>

#include "backend/cpu/gemm.h"
#include "backend/cpu/gemm_int8.h"
#include "backend/cpu/isa.h"
#include "core/thread_pool.h"
#include "pipeline/memory_plan.h"
#include "pipeline/pipeline.h"

namespace fluxpipe {
namespace {

// "model name" and "cpu family" from /proc/cpuinfo ("" where absent).
std::string cpuinfo_field(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) != 0) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "";
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace

std::vector<DeviceReport> devices() {
  using namespace cpu;
  DeviceReport r;
  r.name = "cpu";
  std::string model = cpuinfo_field("model name"), family = cpuinfo_field("cpu family");
  r.facts.push_back({"model", (model.empty() ? "unknown" : model) + (family.empty() ? "" : " (family " + family + ")")});
  r.facts.push_back({"threads", std::to_string(ThreadPool::global().size()) + " (FLUXPIPE_THREADS; default: every core)"});
  r.facts.push_back({"memory", gib(machine_memory_bytes()) + " (the smaller of MemTotal and the cgroup limit)"});
  r.facts.push_back({"instructions", std::string(isa_name(detected_isa())) + " detected, " + isa_name(active_isa()) +
                                         " in force (FLUXPIPE_ISA=amx|avx512bf16|avx512|avx2|generic caps it)"});
  r.facts.push_back({"bf16 weights", std::string(gemm_kernel_name(Compute::BF16)) + " kernels" +
                                         (isa_at_least(Isa::avx512bf16) ? "" : ", products in F32 on bf16-rounded values")});
  // Which products Q8_0 / Q4_0 weights get here, and why not the integer ones where they do not.
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::string what;
    if (gemm_int8_available(t)) {
      what = std::string("integer products (") + gemm_int8_kernel_name() + "; FLUXPIPE_INT8=0 turns them off)";
    } else if (isa_at_least(Isa::avx512bf16)) {
      what = "widened to bf16 (this level has bf16 dot products)";
    } else {
      what = "widened to bf16 values (integer products are off: FLUXPIPE_INT8=0, or Q8_0 without AVX-VNNI)";
    }
    r.facts.push_back({std::string(t == DType::Q8_0 ? "q8_0" : "q4_0") + " weights", what});
  }
  return {r};
}

}  // namespace fluxpipe
