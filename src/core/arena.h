// fluxpipe core: an activation arena — a bump allocator that a forward pass allocates its
// intermediate tensors from, so that steady-state passes do not call malloc per op.
//
// Tensors made from an arena are valid until reset(); reset() keeps the memory for the
// next pass (blocks are merged into one of the high-water size). Tracks the peak.
// Thread-safety: not thread-safe; one arena per engine thread.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace fluxpipe {

class Arena {
 public:
  explicit Arena(size_t initial_bytes = 0);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // A zero-filled tensor from the arena (64-byte aligned).
  Tensor zeros(const Shape& shape, DType dtype);
  // Uninitialised; for outputs every element of which an op writes.
  Tensor empty(const Shape& shape, DType dtype);
  // Invalidates every tensor handed out since the last reset.
  void reset();

  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  size_t capacity() const;

 private:
  struct Block {
    uint8_t* data;
    size_t size;
    size_t top;
  };
  void* allocate(size_t bytes);
  std::vector<Block> blocks_;
  size_t used_ = 0;
  size_t peak_ = 0;
};

}  // namespace fluxpipe
