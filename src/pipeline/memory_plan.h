// fluxpipe pipeline: the memory plan — which model parts stay resident between the phases of
// a job (text encoding, denoising, decoding) and whether decoding is tiled, so that a job stays
// within a budget of resident memory.
//
// The weights are memory-mapped files: a part becomes resident as a phase reads it, and
// "releasing" it drops its pages from the process (io::release_resident_pages); it stays
// mapped and is read back in (from the page cache when the system kept it) when a later phase
// needs it. Before each phase the planner releases parts the phase does not need, the largest
// first, only while the resident parts plus what the phase needs would exceed the budget — so
// with memory to spare nothing is ever released, and a server keeps everything warm.
// Activation sizes are estimates (constants measured on the real widths; see memory_plan.cpp).
// Thread-safety: one job at a time (the engine's contract).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fluxpipe {

// This machine's memory for one process: the smaller of MemTotal and the cgroup limit.
size_t machine_memory_bytes();
// The process's resident memory now (VmRSS) and its peak so far (VmHWM).
size_t resident_bytes();
size_t peak_resident_bytes();

class MemoryPlanner {
 public:
  // `reserved`: memory the process holds besides the parts and a phase's activations (code,
  // libraries, tokenizers, kernel scratch), counted against the budget in every phase.
  explicit MemoryPlanner(size_t budget_bytes, size_t reserved_bytes = 0) : budget_(budget_bytes), reserved_(reserved_bytes) {}

  // A part of `bytes` that `release` drops from resident memory. Returns its handle.
  int add_part(std::string name, size_t bytes, std::function<void()> release);

  // Before a phase that reads `needs` and allocates about `activation_bytes`: releases resident
  // parts outside `needs`, largest first, while the total would exceed the budget; then marks
  // `needs` resident. Returns the names released (for the job's report).
  std::vector<std::string> enter(const std::vector<int>& needs, size_t activation_bytes);

  // Budget left for activations if `needs` were resident and every other part released
  // (0 when the parts alone exceed it).
  size_t room_with_only(const std::vector<int>& needs) const;
  // Budget left for activations with `needs` resident and every resident part kept.
  size_t room_keeping(const std::vector<int>& needs) const;

  size_t budget() const { return budget_; }
  size_t reserved() const { return reserved_; }
  size_t part_bytes(int part) const { return parts_.at(static_cast<size_t>(part)).bytes; }
  bool resident(int part) const { return parts_.at(static_cast<size_t>(part)).resident; }

 private:
  struct Part {
    std::string name;
    size_t bytes;
    std::function<void()> release;
    bool resident = false;
  };
  size_t total(const std::vector<int>& needs, bool keep_others) const;
  size_t budget_;
  size_t reserved_;
  std::vector<Part> parts_;
};

// Activation estimates (bytes) for the phases of a FLUX.1 job. Fixed overheads scale with the
// model's width (measured at the real widths), so a toy test model is not charged a real one's.
size_t text_activation_bytes(int64_t t5_width);
size_t denoise_activation_bytes(int64_t batch, int64_t image_tokens, int64_t text_tokens, int64_t hidden);
size_t decode_activation_bytes(int64_t batch, int64_t pixels);
// How many images of one job to denoise at once. `act(b)` is the activation estimate for b
// images; `weights` the bytes of the part the phase reads; `room` the budget less what the
// process holds. The largest b <= count whose activations fit beside the weights; when even
// b = 1 does not fit beside them (the weights are memory-mapped, so the system can evict and
// re-read their pages; activations cannot be), 1 if its activations fit `room` alone, else 0 —
// the job does not fit at all.
int64_t batch_that_fits(int64_t count, size_t weights, size_t room, const std::function<size_t(int64_t)>& act);

// The largest square tile side (in latent pixels, a multiple of 8, at least 32) whose decoding
// fits `room` bytes; `factor` is image pixels per latent pixel.
int64_t decode_tile_for(size_t room, int64_t factor);

}  // namespace fluxpipe
