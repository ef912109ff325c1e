// fluxpipe models: the FLUX.1 rectified-flow transformer (schnell and dev), as Black Forest
// Labs' reference computes it.
//
// Config: every size comes from the weights (hidden width, input widths, depths, MLP width,
// head width from the QK-norm scale); RoPE axes and theta come from the model's parameters
// (BFL's `FluxParams` JSON) or, for the real FLUX.1 width (head_dim 128), from the published
// values. A FLUX.1-dev file is the same model with `guidance_embed`.
// Weights: tensors under BFL's names (io/name maps translate other layouts first); they are
// views into the mapped file, never copied. Any dtype the core supports.
// Thread-safety: forward() may be called by one thread at a time per Ctx.
//
// Letters: B batch, Li image tokens, Lt text tokens, L = Lt + Li, H hidden, Hd head width.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/weights.h"
#include "models/common.h"
#include "ops/ops.h"

namespace fluxpipe::flux {

struct Config {
  int64_t in_channels = 0;      // packed latent features (64)
  int64_t out_channels = 0;
  int64_t vec_in_dim = 0;       // pooled text vector (768)
  int64_t context_in_dim = 0;   // text token width (4096)
  int64_t hidden = 0;           // 3072
  int64_t mlp_hidden = 0;       // 12288
  int64_t num_heads = 0;        // 24
  int64_t head_dim = 0;         // 128
  int depth = 0;                // double-stream blocks (19)
  int depth_single = 0;         // single-stream blocks (38)
  std::vector<int> axes_dim;    // RoPE widths per id axis (16, 56, 56)
  double theta = 10000;
  bool guidance_embed = false;  // FLUX.1-dev
  bool qkv_bias = true;

  // Sizes from the weights; axes/theta (and a heads cross-check) from `params` when given.
  // Throws UserError naming what is missing or inconsistent.
  static Config from_weights(const io::WeightSet& w, const nlohmann::json* params);
};

using models::Linear;
using models::Trace;

class Model {
 public:
  // REQUIRES: weights under BFL names. Throws UserError naming a missing or misshapen tensor.
  Model(Config config, const io::WeightSet& weights);

  const Config& config() const { return cfg_; }

  // img [B, Li, in], img_ids [B, Li, 3], txt [B, Lt, ctx], txt_ids [B, Lt, 3], timesteps [B],
  // y [B, vec_in], guidance [B] (dev only) -> velocity [B, Li, out].
  Tensor forward(Ctx& c, const Tensor& img, const Tensor& img_ids, const Tensor& txt, const Tensor& txt_ids,
                 const Tensor& timesteps, const Tensor& y, const Tensor* guidance, const Trace& trace = {}) const;

 private:
  struct Mlp {
    Linear in, out;   // MLPEmbedder: in -> silu -> out
  };
  struct Stream {     // one modality's half of a double block
    Linear mod, qkv, proj, mlp0, mlp2;
    Tensor q_scale, k_scale;
  };
  struct Double {
    Stream img, txt;
  };
  struct Single {
    Linear linear1, linear2, mod;
    Tensor q_scale, k_scale;
  };

  Config cfg_;
  Linear img_in_, txt_in_, final_linear_, final_mod_;
  Mlp time_in_, vector_in_;
  std::optional<Mlp> guidance_in_;
  std::vector<Double> doubles_;
  std::vector<Single> singles_;
};

}  // namespace fluxpipe::flux
