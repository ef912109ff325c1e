// fluxpipe pipeline: the seam between the image engine and everything that serves it.
//
// The server and the CLI know the engine only through this header. An Engine turns
// one GenerateJob (prompt, size, steps, one seed per image) into RGB images, reporting
// each denoising step through a callback that can also cancel the job.
//
// Ownership: an Engine owns its weights; callers hold it by unique_ptr and share a
// reference with one job runner. Thread-safety: generate() is NOT re-entrant; one
// job at a time per Engine (the server's runner guarantees it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fluxpipe {

// What one job asks the engine for. Sizes are already validated and rounded to
// multiples of 16 by whoever builds the job.
struct GenerateJob {
  std::string prompt;
  std::string negative_prompt;     // empty: no classifier-free guidance
  float true_cfg_scale = 1.0f;     // used only with a negative prompt
  int width = 1024;
  int height = 1024;
  int steps = 4;
  std::vector<int64_t> seeds;      // one per image; images.size() == seeds.size()
};

// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;        // [height, width, 3]
};

// Called after each step with (steps done, steps total). Returning false asks the
// engine to stop; it then throws Cancelled at the next step boundary.
using StepCallback = std::function<bool(int done, int total)>;

struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("cancelled") {}
};

class Engine {
 public:
  virtual ~Engine() = default;
  // A short human-readable name of the loaded model, recorded in image metadata.
  virtual std::string model_name() const = 0;
  // REQUIRES: job validated (width/height multiples of 16, steps >= 1, seeds non-empty).
  // Throws Cancelled when on_step returned false; UserError for requests the model
  // cannot serve; IoError/InternalError otherwise.
  virtual std::vector<Image> generate(const GenerateJob& job, const StepCallback& on_step) = 0;
  // Whether the last generate() had to cut the prompt (or negative prompt) to the text
  // encoders' limits (77 CLIP tokens, 256/512 T5 tokens).
  virtual bool last_prompt_truncated() const { return false; }
  // Seconds per stage of the last generate() ("text encoders", "denoising", "decoding").
  virtual std::vector<std::pair<std::string, double>> last_stage_seconds() const { return {}; }
  // What the memory plan did in the last generate(), in words ("kept every part resident",
  // "released the T5 encoder before denoising; decoded in 4 tiles of 64"); empty if nothing to say.
  virtual std::string last_memory_plan() const { return {}; }
};

enum class Tiling { automatic, on, off };

struct EngineOptions {
  // Resident memory the engine plans a job within, in bytes; 0: this machine's memory (the
  // smaller of MemTotal and the cgroup limit). Parts not needed by the running phase are
  // released when keeping them would not fit (see pipeline/memory_plan.h).
  size_t memory_budget = 0;
  // Tiled decoding: automatic when a whole decode would not fit the budget, always, or never.
  Tiling vae_tiling = Tiling::automatic;
};

// Loads the FLUX.1 model found at `model_path`: a diffusers folder, a folder of single files in
// any layout (BFL, ComfyUI, GGUF), or one file. Throws UserError naming what is missing or wrong.
std::unique_ptr<Engine> load_engine(const std::string& model_path, const EngineOptions& options = {});
// "auto" | "on" | "off"; UserError "[op] --vae-tiling: ..." otherwise.
Tiling parse_tiling(const std::string& op, const std::string& text);

// The "parameters" text image tools read (prompt, negative prompt, then one settings line:
// steps, sampler, seed, size, model, and the true CFG scale when a negative prompt was given).
// The one builder of it: the CLI and the server both write it.
std::string parameters_text(const GenerateJob& job, int64_t seed, const std::string& model_name);

// Encodes `image` as PNG with text chunks (key, value) in the given order — the "parameters"
// chunk image tools read goes here. A value that is plain ASCII goes in a tEXt chunk, any other
// in an iTXt chunk (UTF-8; tEXt is Latin-1 by the PNG specification); NUL and other control
// characters but newline and tab are written as \xNN, so no reader sees a truncated value.
// Throws InternalError on failure.
std::vector<uint8_t> encode_png(const Image& image,
                                const std::vector<std::pair<std::string, std::string>>& text);

// JPEG (quality 1..100) with `comment` in a COM marker (the parameters text), and WebP (lossy,
// quality 0..100, no metadata). Throw InternalError on failure.
std::vector<uint8_t> encode_jpeg(const Image& image, int quality, const std::string& comment);
std::vector<uint8_t> encode_webp(const Image& image, int quality);

}  // namespace fluxpipe
