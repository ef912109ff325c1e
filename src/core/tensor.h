// fluxpipe core: Tensor — a dtype, a shape, strides, and a reference to storage.
//
// Storage is reference-counted and belongs to a device (the CPU today): it is owned
// aligned memory, a slice of an activation Arena, or a read-only view into a memory-mapped
// weight file (then the file stays mapped while any tensor views it). Tensors are cheap
// handles: copying one shares the storage. Strides are in elements, row-major by default;
// views (slice, reshape of contiguous data) share storage. Block-quantized tensors are
// always contiguous and their last dimension is a multiple of the block size.
// Letters in shape comments: B batch, L tokens, H hidden width, C channels.
// Thread-safety: a Tensor handle is a value; concurrent writes to the same storage are the
// caller's business (ops never write their inputs).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace fluxpipe {

enum class Device : uint8_t { CPU, CUDA };

// A block of memory on a device. `data` is only dereferenced by backends.
struct Storage {
  Device device = Device::CPU;
  void* data = nullptr;
  size_t bytes = 0;
  bool read_only = false;
  bool file_mapped = false;                // a read-only mapping of a file: pages can be dropped and re-read
  std::function<void(Storage&)> release;   // frees or unmaps; may be empty
  ~Storage() {
    if (release) release(*this);
  }
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // A new zero-filled CPU tensor (64-byte aligned).
  static Tensor zeros(const Shape& shape, DType dtype);
  // A new CPU tensor whose contents are unspecified, for outputs that are written whole.
  static Tensor empty(const Shape& shape, DType dtype);
  // Wraps existing storage; offset in bytes. REQUIRES storage large enough (checked).
  static Tensor view_of(std::shared_ptr<Storage> storage, size_t offset, const Shape& shape, DType dtype);
  // A CPU F32 tensor with the given values (tests, small inputs).
  static Tensor from_floats(const Shape& shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const { return shape_.at(static_cast<size_t>(d < 0 ? d + dim() : d)); }
  int64_t numel() const { return fluxpipe::numel(shape_); }
  size_t nbytes() const { return bytes_for(dtype_, numel()); }
  Device device() const { return storage_ ? storage_->device : Device::CPU; }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset() const { return offset_; }

  // Raw access, for backends and I/O only (models never touch memory directly).
  template <typename T> T* data() const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(storage_->data) + offset_);
  }

  // Views (share storage). REQUIRES contiguous for reshape; throws UserError otherwise.
  Tensor reshape(const Shape& shape) const;
  // Elements [start, start+length) of dimension d.
  Tensor slice(int d, int64_t start, int64_t length) const;
  // Reorders dimensions (a strided view): out.size(i) == size(dims[i]). Dense dtypes only.
  Tensor permute(const std::vector<int>& dims) const;

  // "F32[2, 3]" — for error messages.
  std::string describe() const;

  // Reads the whole tensor as floats (any floating or block dtype), contiguous order.
  std::vector<float> to_floats() const;

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  Shape strides_;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
};

// Allocates `bytes` of 64-byte aligned CPU memory, zeroed unless `zero` is false. Large
// blocks come from (and go back to) core/block_cache.h.
std::shared_ptr<Storage> allocate_cpu(size_t bytes, bool zero = true);
// Drops the process's pages of [data, data + bytes) of a file mapping, whole pages inside the
// range only (a page shared with a neighbouring tensor may still be wanted); they are read back
// from the file when touched again. Returns the bytes advised (0 when madvise refused).
size_t drop_mapped_pages(const void* data, size_t bytes);

}  // namespace fluxpipe
