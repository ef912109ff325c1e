// fluxpipe pipeline: finding the four parts of a FLUX.1 model in whatever layout a user has.
//
// `path` is a folder (a diffusers model folder with model_index.json, or any folder holding
// the parts as single files — BFL's flux1-*.safetensors + ae.safetensors, ComfyUI's clip_l /
// t5xxl files, GGUF transformers or T5 encoders) or a single file. Every weight file found is
// classified by its tensor names, never by its file name. Configs: a diffusers folder's
// config.json files, or fluxpipe.json (written by `make-test-model`) for sizes the weights
// cannot tell; the real FLUX.1 parts need neither.
// Thread-safety: plain data.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "io/weights.h"

namespace fluxpipe {

struct ModelFiles {
  io::WeightSet transformer, ae, clip, t5;        // under BFL / HF names already
  std::optional<nlohmann::json> transformer_params, ae_params, clip_config, t5_config;   // BFL/HF keys
  std::string clip_tokenizer_dir;                 // vocab.json + merges.txt
  std::string t5_tokenizer_file;                  // spiece.model
  std::string name;                               // for image metadata
  bool test_model = false;                        // random weights from make-test-model
};

// Throws UserError naming each missing part and what was expected.
ModelFiles find_model_files(const std::string& path);

}  // namespace fluxpipe
