// fluxpipe models: FLUX.1's text encoders — the CLIP ViT-L/14 text tower (pooled output) and
// the T5 v1.1 encoder (last hidden state), as Hugging Face transformers computes them.
//
// Sizes come from the weights (vocabulary, widths, layers, FFN width, position table, bucket
// count); what the weights cannot tell — CLIP's head count, layer-norm epsilon and activation,
// T5's head count, epsilon and maximum distance — comes from HF's config.json when given, or
// from the real FLUX.1 encoders' published values for their widths (CLIP-L: 768 wide,
// 12 heads; T5-XXL: 4096 wide, 64 heads).
// Weights: HF names (diffusers `text_encoder/`, `text_encoder_2/`, ComfyUI clip_l / t5xxl files).
// Thread-safety: forward() by one thread at a time per Ctx.
// Letters: B batch, T tokens, H hidden.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/weights.h"
#include "models/common.h"
#include "ops/ops.h"

namespace fluxpipe::text {

struct ClipConfig {
  int64_t vocab = 0, hidden = 0, heads = 0, intermediate = 0, positions = 0;
  int layers = 0;
  float eps = 1e-5f;
  Unary act = Unary::quick_gelu;
  static ClipConfig from_weights(const io::WeightSet& w, const nlohmann::json* hf_config);
};

struct ClipOutput {
  Tensor last_hidden_state;   // [B, T, H]
  Tensor pooler_output;       // [B, H]: the row at the first largest id (the first end token)
};

class ClipTextModel {
 public:
  ClipTextModel(ClipConfig cfg, const io::WeightSet& w);
  const ClipConfig& config() const { return cfg_; }
  // input_ids [B, T] (any integer or float dtype), T <= positions. No attention mask: Flux passes none.
  ClipOutput forward(Ctx& c, const Tensor& input_ids) const;

 private:
  struct Layer {
    models::Linear q, k, v, out, fc1, fc2;
    Tensor ln1_w, ln1_b, ln2_w, ln2_b;
  };
  ClipConfig cfg_;
  Tensor token_embedding_, position_embedding_, final_w_, final_b_;
  std::vector<Layer> layers_;
};

struct T5Config {
  int64_t vocab = 0, d_model = 0, heads = 0, d_kv = 0, d_ff = 0, buckets = 0;
  int layers = 0;
  int max_distance = 128;
  float eps = 1e-6f;
  static T5Config from_weights(const io::WeightSet& w, const nlohmann::json* hf_config);
};

class T5Encoder {
 public:
  T5Encoder(T5Config cfg, const io::WeightSet& w);
  const T5Config& config() const { return cfg_; }
  // input_ids [B, L] -> last hidden state [B, L, d_model]. `attention_mask` [B, L] (1 = attend)
  // is optional: Flux passes none, so padding tokens take part.
  Tensor forward(Ctx& c, const Tensor& input_ids, const Tensor* attention_mask = nullptr) const;

 private:
  struct Block {
    Tensor q, k, v, o, ln_attn, wi0, wi1, wo, ln_ff;
  };
  T5Config cfg_;
  Tensor shared_, rel_bias_, final_ln_;
  std::vector<Block> blocks_;
};

}  // namespace fluxpipe::text
