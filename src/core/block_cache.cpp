#include "core/block_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>

namespace fluxpipe::block_cache {
namespace {

size_t round_up(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }

constexpr size_t kHuge = size_t{2} << 20;

// Large blocks are their own mappings, 2 MiB aligned and marked for transparent huge pages:
// one fault per 2 MiB instead of one per 4 KiB when a block is first touched.
void* map_block(size_t bytes) {
  void* p = mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(p), aligned = (start + kHuge - 1) / kHuge * kHuge;
  if (aligned > start) munmap(p, aligned - start);
  size_t tail = start + bytes + kHuge - (aligned + bytes);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);   // advice only; failure is harmless
  return reinterpret_cast<void*>(aligned);
}

void unmap_block(void* p, size_t bytes) { munmap(p, bytes); }

struct Kept {
  void* block;
  uint64_t given_at;   // clock of its return, for least-recently-used eviction
};

struct Cache {
  std::mutex mu;
  std::multimap<size_t, Kept> kept;   // capacity -> block
  size_t kept_bytes = 0;
  size_t live_bytes = 0;              // large blocks handed out and not yet given back
  size_t peak_live = 0;               // the most live_bytes has been since the last trim()
  uint64_t clock = 0;

  size_t free_all_locked() {
    size_t n = kept_bytes;
    for (auto& [cap, k] : kept) unmap_block(k.block, cap);
    kept.clear();
    kept_bytes = 0;
    return n;
  }
  // Frees the least recently returned kept blocks until at most `limit` bytes are kept.
  void evict_to_locked(size_t limit) {
    while (kept_bytes > limit) {
      auto oldest = kept.begin();
      for (auto it = kept.begin(); it != kept.end(); ++it) {
        if (it->second.given_at < oldest->second.given_at) oldest = it;
      }
      unmap_block(oldest->second.block, oldest->first);
      kept_bytes -= oldest->first;
      kept.erase(oldest);
    }
  }
};

Cache& cache() {
  static Cache* c = new Cache();   // never destroyed: tensors may be freed during static destruction
  return *c;
}

}  // namespace

void* take(size_t bytes, size_t* capacity) {
  if (bytes < kMinBytes) {
    *capacity = round_up(bytes == 0 ? 1 : bytes, 64);
    return std::aligned_alloc(64, *capacity);
  }
  const size_t want = round_up(bytes, kHuge);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.kept.lower_bound(want);
    if (it != c.kept.end() && it->first <= want + want / 4) {
      void* p = it->second.block;
      *capacity = it->first;
      c.kept_bytes -= it->first;
      c.live_bytes += it->first;
      c.kept.erase(it);
      return p;
    }
    // A miss. Kept plus live blocks may not exceed the most that has been live at once: blocks
    // unused for longest go first, and when live memory reaches a new peak nothing stays kept.
    // (Freeing everything kept at every miss instead never settled in the transformer: each miss
    // threw away blocks the rest of the step needed, so every step mapped fresh pages again.)
    c.live_bytes += want;
    c.peak_live = std::max(c.peak_live, c.live_bytes);
    c.evict_to_locked(c.peak_live - c.live_bytes);
  }
  *capacity = want;
  return map_block(want);
}

void give(void* block, size_t capacity) {
  if (!block) return;
  if (capacity < kHuge) {   // from aligned_alloc (large blocks are whole 2 MiB pages)
    std::free(block);
    return;
  }
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.kept.emplace(capacity, Kept{block, ++c.clock});
  c.kept_bytes += capacity;
  c.live_bytes -= capacity;
}

size_t trim() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.peak_live = c.live_bytes;
  return c.free_all_locked();
}

size_t kept_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.kept_bytes;
}

}  // namespace fluxpipe::block_cache
