// Copies the CPU backend derives from weight tensors to compute faster — BF16 weights reordered
// into oneDNN's blocked layouts (onednn_gemm.cpp, onednn_conv.cpp), 3 x 3 kernels transformed for
// Winograd (winograd.cpp) — kept by the weights' address and owning storage. Weights are
// immutable (file mappings, or tensors nobody writes), so a copy stays valid while its storage
// lives; the weak reference notices when it is gone, so a new tensor at the same address is never
// mistaken for the old one.
// Thread-safety: none; each user holds its own mutex around every call.
#pragma once

#include <cstddef>
#include <map>
#include <memory>

#include "core/tensor.h"

namespace fluxpipe::cpu {

template <class Copy>
class WeightCopies {
 public:
  // The copy made from the weights at `addr` in `owner` that `match(copy)` accepts, or null. The
  // pointer is valid until the next add() or release().
  template <class Match>
  const Copy* find(const void* addr, const std::shared_ptr<Storage>& owner, Match match) const {
    auto range = entries_.equal_range(addr);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second.owner.lock() == owner && match(it->second.copy)) return &it->second.copy;
    }
    return nullptr;
  }

  // Keeps `copy` (of `bytes`): first drops the copies whose weights are gone, then all of them if
  // the new one would take the total past `limit`.
  const Copy& add(const void* addr, const std::shared_ptr<Storage>& owner, Copy copy, size_t bytes, size_t limit) {
    release_where([](const Entry& e) { return e.owner.expired(); });
    if (bytes_ + bytes > limit) release_where([](const Entry&) { return true; });
    bytes_ += bytes;
    return entries_.emplace(addr, Entry{owner, std::move(copy), bytes})->second.copy;
  }

  // Drops the copies made from weights on `of` (nullptr: all) and those whose weights are gone.
  // Returns the bytes freed.
  size_t release(const Storage* of) {
    return release_where([of](const Entry& e) {
      auto owner = e.owner.lock();
      return !of || !owner || owner.get() == of;
    });
  }

  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::weak_ptr<Storage> owner;
    Copy copy;
    size_t bytes;
  };

  template <class Pred>
  size_t release_where(Pred drop) {
    size_t freed = 0;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (drop(it->second)) {
        freed += it->second.bytes;
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    bytes_ -= freed;
    return freed;
  }

  std::multimap<const void*, Entry> entries_;
  size_t bytes_ = 0;
};

}  // namespace fluxpipe::cpu
