// fluxpipe pipeline: tiny random-weight FLUX.1-shaped models for tests and smoke checks
// (`fluxpipe make-test-model`). Every part has the real architecture at toy widths and the real
// tokenizers' vocabularies; files are marked as test models in their metadata and in
// fluxpipe.json, and every image they make says so in its parameters. They draw noise, not
// pictures.
#pragma once

#include <string>

namespace fluxpipe {

// Writes the four parts into `dir` (created if needed) in BFL / ComfyUI single-file layout:
// flux1-test.safetensors, ae.safetensors, clip_l.safetensors, t5xxl.safetensors, fluxpipe.json.
void write_test_model(const std::string& dir, uint64_t seed = 1);

}  // namespace fluxpipe
