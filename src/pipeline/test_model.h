// fluxpipe pipeline: tiny random-weight FLUX.1-shaped models for tests and smoke checks
// (`fluxpipe make-test-model`). Every part has the real architecture at toy widths and the real
// tokenizers' vocabularies; files are marked as test models in their metadata and in
// fluxpipe.json, and every image they make says so in its parameters. They draw noise, not
// pictures.
#pragma once

#include <cstdint>
#include <string>

namespace fluxpipe {

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

}  // namespace fluxpipe
