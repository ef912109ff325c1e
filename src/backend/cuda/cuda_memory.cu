// Device memory for the CUDA backend: a cache of freed blocks by size (plain cudaMalloc
// underneath, never managed memory), and the CUDA error messages every file here raises.
#include <algorithm>
#include <map>
#include <mutex>

#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

namespace fluxpipe::cuda {

void fail(const char* op, const char* call, cudaError_t e) {
  std::string text = std::string("[") + op + "] " + call + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  if (e == cudaErrorMemoryAllocation) throw UserError(text);
  throw InternalError(text);
}

namespace {
// Small blocks round to 512 bytes, large ones to 2 MiB, so that the sizes a job asks for again
// and again find each other; a cached block serves a request of at least half its size.
size_t round_size(size_t bytes) {
  const size_t small = 512, large = size_t{2} << 20;
  if (bytes < (size_t{1} << 20)) return std::max(small, (bytes + small - 1) / small * small);
  return (bytes + large - 1) / large * large;
}
}  // namespace

struct MemoryCache::Impl {
  mutable std::mutex mu;
  std::multimap<size_t, void*> free_blocks;   // size -> block
  size_t cached = 0, in_use = 0;
};

MemoryCache::MemoryCache(int device) : device_(device), impl_(std::make_shared<Impl>()) {}

std::shared_ptr<Storage> MemoryCache::allocate(size_t bytes, const char* op) {
  const size_t size = round_size(bytes);
  void* p = nullptr;
  size_t got = size;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->free_blocks.lower_bound(size);
    if (it != impl_->free_blocks.end() && it->first <= 2 * size) {
      p = it->second;
      got = it->first;
      impl_->free_blocks.erase(it);
      impl_->cached -= got;
    }
  }
  if (!p) {
    FLUXPIPE_CUDA_CHECK(op, cudaSetDevice(device_));
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();   // clear it, give the cache back, and try once more
      empty();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw UserError(std::string("[") + op + "] the GPU cannot hold " + std::to_string(size >> 20) + " MiB more (" +
                      cudaGetErrorString(e) + "; " + std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                      " MiB, " + std::to_string(in_use_bytes() >> 20) + " MiB in use by this engine)");
    }
  }
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->in_use += got;
  }
  auto s = std::make_shared<Storage>();
  s->device = Device::CUDA;
  s->data = p;
  s->bytes = bytes;
  std::shared_ptr<Impl> impl = impl_;   // the cache outlives every block it handed out
  s->release = [impl, got](Storage& st) {
    std::lock_guard<std::mutex> lock(impl->mu);
    impl->free_blocks.emplace(got, st.data);
    impl->cached += got;
    impl->in_use -= got;
  };
  return s;
}

void MemoryCache::empty() {
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    blocks.swap(impl_->free_blocks);
    impl_->cached = 0;
  }
  if (blocks.empty()) return;
  // Queued kernels may still read a cached block: finish them before the driver takes it back.
  cudaSetDevice(device_);
  cudaDeviceSynchronize();
  for (auto& [size, p] : blocks) cudaFree(p);
}

size_t MemoryCache::in_use_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->in_use;
}

}  // namespace fluxpipe::cuda
