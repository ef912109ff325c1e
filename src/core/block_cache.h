// fluxpipe core: a cache of large CPU memory blocks behind every tensor allocation.
//
// Why: a forward pass allocates the same activation sizes step after step and block after
// block. Blocks of a few MiB and more come from mmap in glibc, so without a cache every op
// asked the kernel for fresh pages, which it zero-fills: at 512² a third of the autoencoder's
// time was spent in the kernel clearing pages.
// Policy: a freed block is kept; a request takes the smallest kept block that is at least
// the size asked and at most a quarter larger. On a miss a new block is mapped, and kept blocks
// are freed (least recently returned first) so that kept plus live blocks never exceed the most
// that has been live at once since the last trim(): the process's peak resident memory is what
// its live tensors need, as without the cache, while a pass that repeats its sizes (the
// transformer, step after step) settles into allocating nothing. trim() gives every kept block
// back and restarts that peak (the engine calls it between the phases of a job).
// Small requests (< kMinBytes) go straight to the allocator; large ones are mappings of whole
// 2 MiB pages, marked for transparent huge pages.
// Thread-safety: every function may be called from any thread.
#pragma once

#include <cstddef>

namespace fluxpipe::block_cache {

constexpr size_t kMinBytes = size_t{1} << 20;

// 64-byte aligned memory of at least `bytes` (uninitialised); *capacity receives its real
// size, to be passed back to give(). Returns nullptr when the system has no memory.
void* take(size_t bytes, size_t* capacity);
// Returns a block from take(); it is kept for reuse (or freed, when small).
void give(void* block, size_t capacity);
// Frees every kept block and restarts the live peak (between the phases of a job). Returns the bytes freed.
size_t trim();
// Bytes currently kept for reuse.
size_t kept_bytes();

}  // namespace fluxpipe::block_cache
