// fluxpipe pipeline: running one model component on named tensors from a safetensors file
// and writing named tensors back (`fluxpipe run ...`), so that anyone can compare any
// component with a reference without writing code. Tensor names follow the test data in
// ../shared/testdata/flux-tiny.
// Thread-safety: one call at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fluxpipe {

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
};

struct ComponentReport {
  std::vector<std::string> written;   // tensor names
  double seconds = 0;
  size_t peak_rss_bytes = 0;          // VmHWM of the process
  size_t arena_peak_bytes = 0;        // activations
};

// `fluxpipe quantize`: reads weights (any layout; a FLUX transformer is renamed to BFL names),
// writes GGUF with every matrix whose rows fit the block size in `type` (Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q6_K) and the rest as they were (fp8 widened to F16, which GGUF holds).
// Returns the number of tensors quantized. Throws UserError for unknown types or files.
int quantize_file(const std::string& input, const std::string& output, const std::string& type);

// The process's peak resident memory (VmHWM), in bytes.
size_t peak_rss_bytes();

// Throws UserError naming the missing input, file or option.
ComponentReport run_component(const ComponentRun& run);

}  // namespace fluxpipe
