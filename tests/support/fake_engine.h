// A deterministic test double of the image engine, for server tests and the load
// benchmark only (never linked into fluxpipe itself). It draws a pattern computed from
// the seed, size and prompt — not a picture — and sleeps `step_ms` per step so that
// tests can observe PENDING, progress and cancellation. A prompt containing "[fail]"
// makes it throw, to test the failure path.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

#include "pipeline/pipeline.h"

namespace fluxpipe::testing {

class FakeEngine final : public Engine {
 public:
  explicit FakeEngine(int step_ms = 0) : step_ms_(step_ms) {}

  std::string model_name() const override { return "test-double (draws a pattern, not a model)"; }

  std::vector<Image> generate(const GenerateJob& job, const StepCallback& on_step) override {
    calls_.fetch_add(1);
    for (int step = 1; step <= job.steps; ++step) {
      if (step_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms_));
      if (!on_step(step, job.steps)) throw Cancelled();
    }
    if (job.prompt.find("[fail]") != std::string::npos) throw std::runtime_error("test double asked to fail");
    uint32_t prompt_hash = 2166136261u;
    for (unsigned char c : job.prompt) prompt_hash = (prompt_hash ^ c) * 16777619u;
    std::vector<Image> out;
    for (int64_t seed : job.seeds) out.push_back(pattern(job.width, job.height, seed, prompt_hash));
    return out;
  }

  static Image pattern(int width, int height, int64_t seed, uint32_t prompt_hash) {
    Image img{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        uint8_t* p = &img.rgb[(static_cast<size_t>(y) * width + x) * 3];
        p[0] = static_cast<uint8_t>(x * 7 + seed);
        p[1] = static_cast<uint8_t>(y * 13 + (seed >> 8));
        p[2] = static_cast<uint8_t>(prompt_hash + static_cast<uint32_t>(x ^ y));
      }
    }
    return img;
  }

  int calls() const { return calls_.load(); }

 private:
  int step_ms_;
  std::atomic<int> calls_{0};
};

}  // namespace fluxpipe::testing
