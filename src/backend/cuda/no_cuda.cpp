// The CUDA entry points of a build made without the CUDA toolkit (-DFLUXPIPE_CUDA=off, or auto
// with no nvcc found): there is no GPU backend to hand out, and every answer says so.
#include "backend/backend.h"
#include "core/error.h"

namespace fluxpipe {

namespace {
const char* kWhy = "this fluxpipe was built without CUDA (rebuild with the CUDA toolkit installed, -DFLUXPIPE_CUDA=on)";
}

bool cuda_built() { return false; }

std::vector<CudaDeviceInfo> cuda_devices(std::string* why) {
  if (why) *why = kWhy;
  return {};
}

Backend& cuda_backend(int index) { throw UserError("[device] cuda:" + std::to_string(index) + ": " + kWhy); }

}  // namespace fluxpipe
