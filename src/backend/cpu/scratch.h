// Per-thread scratch buffers for the CPU kernels. They only grow, so a forward pass that
// repeats the same shapes stops allocating (fresh pages cost a page fault and a kernel
// memset each: measured at a quarter of a 1024x1024 step before this existed). Buffers of
// 1 MiB and more come from the block cache (core/block_cache.h) and so lie on transparent huge
// pages: tile loads that stride across the rows of a 4 KiB-paged buffer missed the TLB on
// every row (measured: the AMX GEMM ran 1,300-1,450 or 1,700-1,950 GFLOP/s at M = 512 from one
// run to the next, depending on where its buffers fell).
// Each (slot, thread) pair is one buffer: a kernel must not use a slot that a kernel it calls
// also uses. Slots: 0-1 gemm (or gemm_int8, which runs in its place), 2-3 oneDNN path, 4-9 attention, 10-15 the GEMM's packing, 16-17 the
// Winograd convolution (winograd.h).
// Contents are unspecified (not zeroed) when a buffer is first handed out or grows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

#include "core/block_cache.h"

namespace fluxpipe::cpu {

struct ScratchBuffer {
  void* data = nullptr;
  size_t capacity = 0;
  ~ScratchBuffer() { block_cache::give(data, capacity); }
};

template <typename T>
T* scratch(int slot, size_t n) {
  thread_local ScratchBuffer buffers[18];
  ScratchBuffer& b = buffers[slot];
  const size_t bytes = n * sizeof(T);
  if (b.capacity < bytes || !b.data) {
    block_cache::give(b.data, b.capacity);
    b.data = block_cache::take(bytes, &b.capacity);
    if (!b.data) throw std::bad_alloc();
  }
  return static_cast<T*>(b.data);
}

}  // namespace fluxpipe::cpu
