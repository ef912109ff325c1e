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
// With several batches (see JobFit) the count runs over all of them: total = steps x batches.
using StepCallback = std::function<bool(int done, int total)>;

// Whether a job fits the engine's memory budget, judged before any work: its images are denoised
// in batches of `batch` (all at once when they fit); a job whose single image does not fit is
// refused, and `reason` says what it needs, the budget, and the largest size that would fit.
struct JobFit {
  bool fits = true;
  int batch = 1;            // images denoised at once (<= the job's count)
  std::string reason;       // when !fits; a client-facing sentence (no file names)
};

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
  // Throws UserError with JobFit::reason when check_fit(job) says it does not fit.
  virtual std::vector<Image> generate(const GenerateJob& job, const StepCallback& on_step) = 0;
  // Cheap (no work, no allocation of note): the server asks it at submission.
  virtual JobFit check_fit(const GenerateJob& job) const {
    return {true, static_cast<int>(job.seeds.size()), ""};
  }
  // Whether the last generate() had to cut the prompt (or negative prompt) to the text
  // encoders' limits (77 CLIP tokens, 256/512 T5 tokens).
  virtual bool last_prompt_truncated() const { return false; }
  // Seconds per stage of the last generate() ("text encoders", "denoising", "decoding").
  virtual std::vector<std::pair<std::string, double>> last_stage_seconds() const { return {}; }
  // What the memory plan did in the last generate(), in words ("kept every part resident",
  // "released the T5 encoder before denoising; decoded in 4 tiles of 64"); empty if nothing to say.
  virtual std::string last_memory_plan() const { return {}; }
  // Where it computes, as chosen at load: "cpu", "cuda:0 (NVIDIA H200)", with the reason for an
  // automatic choice ("cpu (no CUDA GPU is present)").
  virtual std::string device_name() const { return "cpu"; }
};

enum class Tiling { automatic, on, off };

struct EngineOptions {
  // Resident memory the engine plans a job within, in bytes; 0: this machine's memory (the
  // smaller of MemTotal and the cgroup limit). Parts not needed by the running phase are
  // released when keeping them would not fit (see pipeline/memory_plan.h).
  size_t memory_budget = 0;
  // Tiled decoding: automatic when a whole decode would not fit the budget, always, or never.
  Tiling vae_tiling = Tiling::automatic;
  // Where the engine computes: "auto" (the first CUDA GPU when the build has CUDA and one is
  // present, else the CPU), "cpu", "cuda" or "cuda:N". On a GPU the weights are copied there once
  // at load, every part stays resident, and a job is planned within the GPU memory that was free
  // at load (memory_budget then applies to the host only, which holds nothing of note).
  // The CLI and the server default to "auto" (FLUXPIPE_DEVICE); a program embedding the engine
  // gets the CPU unless it asks.
  std::string device = "cpu";
  // On a GPU: the device memory a job is planned within, in bytes; 0: what was free there at
  // load. A job whose working memory does not fit beside the weights is refused before it starts.
  size_t vram_budget = 0;
  // Prompts whose CLIP and T5 outputs are kept (most recently used), so that a prompt seen again —
  // the same prompt with other seeds, as clients ask — skips the text encoders; 0: none (the
  // default here; the server keeps 8: with schnell's 256 T5 tokens 4 MiB each, 8 MiB with dev's 512).
  size_t text_cache = 0;
  // Memory the process holds besides the model and a job's activations, counted against the
  // budget; 0: measured at load (the resident set then, plus 256 MiB for kernel scratch and the
  // code oneDNN generates). Set by callers that account for it themselves (the tests do, to
  // plan exact budgets).
  size_t held_bytes = 0;
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


// ---- Tools: the engine's other entry points for the CLI (`run`, `quantize`, `make-test-model`,
// `tokenize`), here so that the CLI, like the server, needs no header but this one.

// fluxpipe pipeline: running one model component on named tensors from a safetensors file
// and writing named tensors back (`fluxpipe run ...`), so that anyone can compare any
// component with a reference without writing code. Tensor names follow the test data in
// ../shared/testdata/flux-tiny.
// Thread-safety: one call at a time.
struct ComponentRun {
  std::string component;     // transformer | vae-decode | vae-encode | sample | randn | clip | t5
  std::string weights;       // transformer or autoencoder weights (file or folder)
  std::string ae;            // sample: autoencoder weights
  std::string config;        // BFL parameters JSON for `weights` (FluxParams / AutoEncoderParams)
  std::string ae_config;     // sample: AutoEncoderParams JSON
  std::string inputs;        // safetensors with the named inputs
  std::string output;        // safetensors to write
  std::string compute = "f32";   // f32 | bf16
  int steps = 4;             // sample
  float guidance = 3.5f;     // sample with a dev model, when the inputs carry no `guidance`
  uint64_t seed = 0;         // randn
  std::vector<int64_t> shape;    // randn
  std::string dtype = "f32";     // randn: f32 | bf16
  bool mask = false;             // t5: use `attention_mask` (Flux does not)
  std::string device = "cpu";    // as EngineOptions::device; inputs and weights are copied there, outputs back
};

struct ComponentReport {
  std::vector<std::string> written;   // tensor names
  double seconds = 0;
  size_t peak_rss_bytes = 0;          // VmHWM of the process
  size_t arena_peak_bytes = 0;        // activations (CPU)
  std::string device;                 // where it ran ("cpu", "cuda:0 (...)")
};

// `fluxpipe quantize`: reads weights (any layout; a FLUX transformer is renamed to BFL names),
// writes GGUF with every matrix whose rows fit the block size in `type` (Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q6_K) and the rest as they were (fp8 widened to F16, which GGUF holds).
// Returns the number of tensors quantized. Throws UserError for unknown types or files.
int quantize_file(const std::string& input, const std::string& output, const std::string& type);

// The process's peak resident memory (VmHWM), in bytes.
size_t peak_rss_bytes();

// `fluxpipe devices`: what the engine can run on here, as lines of "what: value" per device.
// The CPU: model, threads, memory, the instruction-set level detected and in force
// (FLUXPIPE_ISA), which product kernels run for bf16 and for Q8_0/Q4_0 weights. Each CUDA GPU
// ("cuda:N"): name, compute capability, total and free memory, driver and runtime versions; or
// one "cuda" entry whose status says why there is none (no CUDA in this build, no driver, no
// GPU). Throws UserError when FLUXPIPE_ISA names a level this CPU lacks.
struct DeviceReport {
  std::string name;
  std::vector<std::pair<std::string, std::string>> facts;
};
std::vector<DeviceReport> devices();
// Whether this build has the CUDA backend (whether a GPU is present is devices()'s business).
bool build_has_cuda();

// Throws UserError naming the missing input, file or option.
ComponentReport run_component(const ComponentRun& run);

// fluxpipe pipeline: tiny random-weight FLUX.1-shaped models for tests and smoke checks
// (`fluxpipe make-test-model`). Every part has the real architecture at toy widths and the real
// tokenizers' vocabularies; files are marked as test models in their metadata and in
// fluxpipe.json, and every image they make says so in its parameters. They draw noise, not
// pictures.
struct TestModelOptions {
  bool real_width = false;   // FLUX.1's real widths (hidden 3072, CLIP-L 768, T5-XXL 4096), BF16 matrices
  int depth = 1;             // double-stream blocks
  int single = 1;            // single-stream blocks
  int text_layers = 1;       // layers of each text encoder
  uint64_t seed = 1;
  std::string quant = "q8_0";   // gguf layout: the transformer's matrices in this block type
  std::string text_quant;       // gguf layout: the T5 encoder as GGUF in this type too (empty: safetensors)
  std::string layout = "bfl";   // bfl: four files; diffusers: the published folder layout with configs;
                                // comfyui: one all-in-one file with ComfyUI's prefixes;
                                // gguf: the transformer as GGUF (`quant`), the rest as bfl
                                // (T5 as GGUF too with `text_quant`)
};

// Writes the four parts into `dir` (created if needed) in the chosen layout, plus fluxpipe.json
// (the sizes the weights cannot tell, and the test-model mark).
void write_test_model(const std::string& dir, const TestModelOptions& options = {});

// `fluxpipe tokenize`: the ids of `text` under FLUX.1's CLIP-L ("clip") or T5 ("t5") tokenizer,
// padded or truncated to `length`. `path`: a tokenizer folder or file; empty: fluxpipe's own
// copies (share/tokenizers). UserError for an unknown tokenizer or unreadable files.
struct TokenizedText {
  std::vector<int64_t> ids;
  bool truncated = false;
};
TokenizedText tokenize_text(const std::string& which, const std::string& path, const std::string& text, int length);

}  // namespace fluxpipe
