// GPU tests: skipped, with the reason, where there is no CUDA GPU to run them on (CI, the
// development machines) — a build without CUDA, no driver, or no device.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "backend/backend.h"

namespace fluxpipe::testing {

// Empty when a CUDA GPU can be used; else why not.
inline std::string gpu_absent_reason() {
  std::string why;
  return cuda_devices(&why).empty() ? why : std::string();
}

}  // namespace fluxpipe::testing

#define FLUXPIPE_NEED_GPU()                                                      \
  do {                                                                           \
    std::string fluxpipe_why_ = ::fluxpipe::testing::gpu_absent_reason();        \
    if (!fluxpipe_why_.empty()) GTEST_SKIP() << "needs a CUDA GPU: " << fluxpipe_why_; \
  } while (0)
