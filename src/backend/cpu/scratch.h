// Per-thread scratch buffers for the CPU kernels. They only grow, so a forward pass that
// repeats the same shapes stops allocating (fresh pages cost a page fault and a kernel
// memset each: measured at a quarter of a 1024x1024 step before this existed).
// Each (slot, thread) pair is one buffer: a kernel must not use a slot that a kernel it calls
// also uses. Slots: 0-1 gemm, 2-3 oneDNN path, 4-9 attention.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fluxpipe::cpu {

template <typename T>
T* scratch(int slot, size_t n) {
  thread_local std::vector<std::vector<T>> buffers(12);
  std::vector<T>& b = buffers[static_cast<size_t>(slot)];
  if (b.size() < n) b.resize(n);
  return b.data();
}

}  // namespace fluxpipe::cpu
