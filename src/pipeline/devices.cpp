// `fluxpipe devices`: the CPU and the CUDA GPUs as the engine sees them; and `--device`, which
// picks one of them for an engine (pipeline/device_select.h).
#include <cstdio>
#include <fstream>
#include <string>

#include "backend/cpu/gemm.h"
#include "backend/cpu/gemm_int8.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/winograd.h"
#include "core/thread_pool.h"
#include "core/error.h"
#include "pipeline/device_select.h"
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
  r.facts.push_back({"3x3 convolutions", winograd_policy()});
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
  std::vector<DeviceReport> out{r};
  std::string why;
  std::vector<CudaDeviceInfo> gpus = cuda_devices(&why);
  if (gpus.empty()) {
    out.push_back({"cuda", {{"status", why}}});
  }
  for (const CudaDeviceInfo& g : gpus) {
    auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); };
    out.push_back({"cuda:" + std::to_string(g.index),
                   {{"model", g.name},
                    {"compute capability", std::to_string(g.cc_major) + "." + std::to_string(g.cc_minor)},
                    {"memory", gib(g.total_bytes) + " total, " + gib(g.free_bytes) + " free"},
                    {"driver", "CUDA " + version(g.driver_version)},
                    {"runtime", "CUDA " + version(g.runtime_version)}}});
  }
  return out;
}

bool build_has_cuda() { return cuda_built(); }

Backend& resolve_device(const std::string& spec, std::string* said, size_t* gpu_free) {
  if (gpu_free) *gpu_free = 0;
  if (spec == "cpu") {
    if (said) *said = "cpu";
    return cpu_backend();
  }
  int index = -1;
  if (spec == "cuda") index = 0;
  else if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 && spec.size() < 9 &&
           spec.find_first_not_of("0123456789", 5) == std::string::npos) index = std::stoi(spec.substr(5));
  const bool automatic = spec == "auto" || spec.empty();
  if (index < 0 && !automatic) throw UserError("[device] '" + spec + "' is not auto, cpu, cuda or cuda:N");
  std::string why;
  std::vector<CudaDeviceInfo> gpus = cuda_devices(&why);
  if (automatic && gpus.empty()) {
    if (said) *said = "cpu (" + why + ")";
    return cpu_backend();
  }
  if (automatic) index = 0;
  Backend& b = cuda_backend(index);   // says why when there is no such GPU
  for (const CudaDeviceInfo& g : gpus) {
    if (g.index == index && gpu_free) *gpu_free = g.free_bytes;
  }
  if (said) *said = b.name() + (automatic ? " (the first CUDA GPU)" : "");
  return b;
}

io::WeightSet weights_on(Backend& backend, const io::WeightSet& w) {
  if (backend.device() == Device::CPU) return w;
  io::WeightSet out;
  out.metadata = w.metadata;
  out.files = w.files;
  for (const auto& [name, t] : w.tensors) {
    if (!t.is_contiguous()) throw InternalError("[device] weight '" + name + "' " + t.describe() + " is not contiguous");
    Tensor d = Tensor::view_of(backend.allocate(std::max<size_t>(t.nbytes(), 1)), 0, t.shape(), t.dtype());
    backend.transfer(t, d);
    out.tensors.emplace(name, d);
  }
  backend.synchronize();
  return out;
}

}  // namespace fluxpipe
