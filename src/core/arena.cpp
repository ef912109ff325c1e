#include "core/arena.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace fluxpipe {

Arena::Arena(size_t initial_bytes) {
  if (initial_bytes) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (initial_bytes + 63) / 64 * 64));
    if (!p) throw IoError("[arena] out of memory reserving " + std::to_string(initial_bytes) + " bytes");
    blocks_.push_back({p, (initial_bytes + 63) / 64 * 64, 0});
  }
}

Arena::~Arena() {
  for (Block& b : blocks_) std::free(b.data);
}

size_t Arena::capacity() const {
  size_t c = 0;
  for (const Block& b : blocks_) c += b.size;
  return c;
}

void* Arena::allocate(size_t bytes) {
  size_t need = (bytes + 63) / 64 * 64;
  if (need == 0) need = 64;
  if (blocks_.empty() || blocks_.back().top + need > blocks_.back().size) {
    // A new block at least as large as everything so far, so passes settle into one block after reset().
    size_t size = std::max(need, capacity());
    size = std::max<size_t>(size, 1 << 20);
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, size));
    if (!p) throw IoError("[arena] out of memory allocating " + std::to_string(size) + " bytes");
    blocks_.push_back({p, size, 0});
  }
  Block& b = blocks_.back();
  void* out = b.data + b.top;
  b.top += need;
  used_ += need;
  peak_ = std::max(peak_, used_);
  return out;
}

Tensor Arena::empty(const Shape& shape, DType dtype) {
  size_t bytes = bytes_for(dtype, numel(shape));
  auto s = std::make_shared<Storage>();
  s->data = allocate(bytes);
  s->bytes = bytes;
  return Tensor::view_of(std::move(s), 0, shape, dtype);
}

Tensor Arena::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.data<uint8_t>(), 0, t.nbytes());
  return t;
}

void Arena::reset() {
  if (blocks_.size() > 1) {
    size_t total = capacity();
    for (Block& b : blocks_) std::free(b.data);
    blocks_.clear();
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, total));
    if (!p) throw IoError("[arena] out of memory allocating " + std::to_string(total) + " bytes");
    blocks_.push_back({p, total, 0});
  }
  for (Block& b : blocks_) b.top = 0;
  used_ = 0;
}

}  // namespace fluxpipe
