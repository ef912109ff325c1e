#include "core/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include "core/block_cache.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace fluxpipe {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t numel(const Shape& s) {
  // A zero anywhere makes the product zero; checking first keeps huge partial products
  // of a lying file header from overflowing.
  for (int64_t d : s) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}
}  // namespace

std::shared_ptr<Storage> allocate_cpu(size_t bytes, bool zero) {
  auto s = std::make_shared<Storage>();
  size_t capacity = 0;
  s->data = block_cache::take(bytes, &capacity);
  if (!s->data) throw IoError("[allocate_cpu] out of memory allocating " + std::to_string(bytes) + " bytes");
  if (zero) std::memset(s->data, 0, capacity);
  s->bytes = bytes;
  s->release = [capacity](Storage& st) { block_cache::give(st.data, capacity); };
  return s;
}

size_t drop_mapped_pages(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t b = reinterpret_cast<uintptr_t>(data), e = b + bytes;
  b = (b + page - 1) / page * page;
  e = e / page * page;
  if (e <= b) return 0;
  return madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED) == 0 ? e - b : 0;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  for (int64_t d : shape) {
    if (d < 0) throw UserError("[Tensor::zeros] negative dimension in " + shape_str(shape));
  }
  return view_of(allocate_cpu(bytes_for(dtype, fluxpipe::numel(shape))), 0, shape, dtype);
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape) {
    if (d < 0) throw UserError("[Tensor::empty] negative dimension in " + shape_str(shape));
  }
  return view_of(allocate_cpu(bytes_for(dtype, fluxpipe::numel(shape)), false), 0, shape, dtype);
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t offset, const Shape& shape, DType dtype) {
  const DTypeInfo& di = info(dtype);
  int64_t n = fluxpipe::numel(shape);
  if (!shape.empty() && shape.back() % di.block_elems != 0) {
    throw UserError(std::string("[tensor] last dimension ") + std::to_string(shape.back()) + " of " + di.name + shape_str(shape) +
                    " is not a multiple of the block size " + std::to_string(di.block_elems));
  }
  size_t need = bytes_for(dtype, n);
  if (!storage || offset + need > storage->bytes) {
    throw UserError("[tensor] " + std::string(di.name) + shape_str(shape) + " at offset " + std::to_string(offset) +
                    " needs " + std::to_string(need) + " bytes; storage has " +
                    std::to_string(storage ? storage->bytes : 0));
  }
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.storage_ = std::move(storage);
  t.offset_ = offset;
  return t;
}

Tensor Tensor::from_floats(const Shape& shape, const std::vector<float>& values) {
  if (static_cast<int64_t>(values.size()) != fluxpipe::numel(shape)) {
    throw UserError("[Tensor::from_floats] " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  }
  Tensor t = zeros(shape, DType::F32);
  std::memcpy(t.data<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::reshape(const Shape& shape) const {
  Shape resolved = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      if (infer >= 0) throw UserError("[reshape] more than one -1 in " + shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= resolved[i];
    }
  }
  if (infer >= 0 && known > 0) resolved[static_cast<size_t>(infer)] = numel() / known;
  if (fluxpipe::numel(resolved) != numel()) {
    throw UserError("[reshape] cannot view " + describe() + " as " + shape_str(shape));
  }
  if (!is_contiguous()) throw UserError("[reshape] " + describe() + " is not contiguous");
  return view_of(storage_, offset_, resolved, dtype_);
}

Tensor Tensor::slice(int d, int64_t start, int64_t length) const {
  if (d < 0) d += dim();
  if (d < 0 || d >= dim() || start < 0 || length < 0 || start + length > shape_[static_cast<size_t>(d)]) {
    throw UserError("[slice] dim " + std::to_string(d) + " [" + std::to_string(start) + ", +" + std::to_string(length) +
                    ") is outside " + describe());
  }
  if (is_quantized(dtype_) && d == dim() - 1) throw UserError("[slice] cannot slice the block dimension of " + describe());
  Tensor t = *this;
  t.shape_[static_cast<size_t>(d)] = length;
  t.offset_ += bytes_for(dtype_, start * strides_[static_cast<size_t>(d)]);
  return t;
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  if (static_cast<int>(dims.size()) != dim() || is_quantized(dtype_)) {
    throw UserError("[permute] " + std::to_string(dims.size()) + " dims for " + describe());
  }
  std::vector<bool> seen(dims.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < dims.size(); ++i) {
    int d = dims[i];
    if (d < 0 || d >= dim() || seen[static_cast<size_t>(d)]) throw UserError("[permute] invalid dims for " + describe());
    seen[static_cast<size_t>(d)] = true;
    t.shape_[i] = shape_[static_cast<size_t>(d)];
    t.strides_[i] = strides_[static_cast<size_t>(d)];
  }
  return t;
}

std::string Tensor::describe() const { return std::string(name(dtype_)) + shape_str(shape_); }

std::vector<float> Tensor::to_floats() const {
  if (!defined()) return {};
  if (device() != Device::CPU) throw UserError("[to_floats] " + describe() + " is not on the CPU");
  std::vector<float> out(static_cast<size_t>(numel()));
  if (is_contiguous()) {
    to_f32(dtype_, data<uint8_t>(), out.data(), numel());
    return out;
  }
  // Walk the strided view row by row (the last dimension may be strided only for dense types).
  int64_t inner = shape_.empty() ? 1 : shape_.back();
  int64_t rows = inner ? numel() / inner : 0;
  std::vector<int64_t> idx(shape_.size(), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    int64_t rem = r;
    for (size_t k = shape_.size() - 1; k-- > 0;) {
      off += (rem % shape_[k]) * strides_[k];
      rem /= shape_[k];
    }
    const uint8_t* base = data<uint8_t>();
    if (strides_.back() == 1) {
      to_f32(dtype_, base + bytes_for(dtype_, off), out.data() + r * inner, inner);
    } else {
      for (int64_t c = 0; c < inner; ++c) to_f32(dtype_, base + bytes_for(dtype_, off + c * strides_.back()), &out[static_cast<size_t>(r * inner + c)], 1);
    }
  }
  return out;
}

}  // namespace fluxpipe
