// fluxpipe io: the tensor names of each checkpoint layout mapped onto BFL's, as data.
//
// Models read BFL's names. A checkpoint in another layout is translated here: diffusers
// folders (split q/k/v are stacked back into one matrix, the final modulation's halves are
// swapped: diffusers stores (scale, shift), BFL (shift, scale); the autoencoder's levels
// are renumbered and its attention's linear weights viewed as 1x1 convolutions), ComfyUI
// single files ("model.diffusion_model." / "first_stage_model." prefixes), and GGUF files
// (city96's use BFL names already).
// Renamed tensors stay views of the mapped file; stacked ones are new memory (noted in the
// README: a diffusers folder costs the size of its q/k/v and single-block input weights again).
// Thread-safety: pure functions.
#pragma once

#include <string>

#include "io/weights.h"

namespace fluxpipe::io {

enum class Layout { bfl, diffusers, comfyui };
const char* layout_name(Layout l);

// The transformer's tensors under BFL names, whatever the layout. Throws UserError naming the
// first missing source tensor.
WeightSet flux_transformer_weights(const WeightSet& src);
// The autoencoder's tensors under BFL names (diffusers `vae/`, ComfyUI/BFL `ae.safetensors`).
WeightSet autoencoder_weights(const WeightSet& src);

// CLIP and T5 text encoders under Hugging Face names: HF/diffusers/ComfyUI files as they are
// (known ComfyUI prefixes stripped), and GGUF T5 files in llama.cpp's naming
// (token_embd, enc.blk.N.attn_q, ...) renamed.
WeightSet text_encoder_weights(const WeightSet& src);

Layout detect_transformer_layout(const WeightSet& src);

// The inverse maps, BFL names -> diffusers names (split q/k/v, halves swapped back, levels
// renumbered), for writing diffusers folders (`make-test-model --layout diffusers`).
NamedTensors flux_transformer_to_diffusers(const WeightSet& bfl);
NamedTensors autoencoder_to_diffusers(const WeightSet& bfl);

// The tensors whose names start with `prefix`, with it removed (views, no copies).
WeightSet with_prefix(const WeightSet& src, const std::string& prefix);

}  // namespace fluxpipe::io
