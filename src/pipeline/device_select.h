// fluxpipe pipeline (internal): which backend an engine computes on, and its weights there.
#pragma once

#include <string>

#include "backend/backend.h"
#include "io/weights.h"

namespace fluxpipe {

// "auto" (the first CUDA GPU when the build has CUDA and one is present, else the CPU), "cpu",
// "cuda" (= cuda:0) or "cuda:N". `said` gets what was chosen and, for auto, why ("cpu (no CUDA
// GPU is present)"). `gpu_free` (when given) gets the chosen GPU's free memory at the call (0 for
// the CPU). UserError for another spelling, or a GPU this build or machine lacks.
Backend& resolve_device(const std::string& spec, std::string* said, size_t* gpu_free = nullptr);

// `w` with every tensor copied to the backend's device, dtypes kept (the CPU: `w` itself).
// Waits until the copies are done.
io::WeightSet weights_on(Backend& backend, const io::WeightSet& w);

}  // namespace fluxpipe
