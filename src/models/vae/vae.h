// fluxpipe models: FLUX.1's 16-channel autoencoder (BFL's AutoEncoder), decoder and encoder.
//
// Structure from the weights: the number of levels, ResNet blocks per level and every
// block's channel counts are read off the tensors (encoder.down.<i>, decoder.up.<i>); the
// latent scale and shift come from the model's parameters (BFL AutoEncoderParams JSON) or
// default to FLUX.1's published 0.3611 and 0.1159. GroupNorm: 32 groups, eps 1e-6.
// Inputs, outputs and traces are nchw; inside, the towers compute in ops::image_layout (nhwc on
// the CPU: its convolutions' own layout).
// Thread-safety: one caller at a time per Ctx.
// Letters: B batch, C channels, h/w latent size, Hi/Wi image size.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/weights.h"
#include "models/common.h"
#include "ops/ops.h"

namespace fluxpipe::vae {

struct Config {
  float scale_factor = 0.3611f;
  float shift_factor = 0.1159f;
  int64_t z_channels = 0;
  static Config from_weights(const io::WeightSet& w, const nlohmann::json* params);
};

// Where the tiles of a latent side of `size` start and end: spans of at most `tile` that cover
// [0, size), consecutive ones overlapping by at least `overlap` (the last one is moved back to end
// at `size`). REQUIRES tile >= 1, 0 <= overlap < tile.
struct Span {
  int64_t begin, end;
};
std::vector<Span> tile_spans(int64_t size, int64_t tile, int64_t overlap);

// Tiled decoding with any per-tile decoder: `decode_tile` maps a latent tile [1, C, th, tw] to
// an image [1, 3, th * factor, tw * factor]; the tiles' images are blended with linear ramps
// over their overlaps. -> [B, 3, h * factor, w * factor].
Tensor decode_in_tiles(Ctx& c, const Tensor& z, int64_t factor, int64_t tile, int64_t overlap,
                       const std::function<Tensor(const Tensor&)>& decode_tile);

class Model {
 public:
  // Loads the decoder, and the encoder when the weights have one. Throws UserError naming a
  // missing or misshapen tensor.
  Model(Config cfg, const io::WeightSet& w);

  const Config& config() const { return cfg_; }
  bool has_encoder() const { return has_encoder_; }
  // Image pixels per latent pixel: 2^(number of upsampling levels); 8 for FLUX.1.
  int64_t spatial_factor() const;

  // z [B, z_channels, h, w] in the transformer's (scaled) space -> image [B, 3, Hi, Wi] in [-1, 1].
  Tensor decode(Ctx& c, const Tensor& z, const models::Trace& trace = {}) const;
  // The same, tile by tile, for large images in bounded memory: the latent is cut into tiles of
  // at most `tile` x `tile` latent pixels overlapping by `overlap`, each tile decoded on its own
  // and the overlaps blended with linear ramps. Not identical to decode(): the group norms and
  // the mid-block attention see one tile at a time (as in diffusers' and ComfyUI's tiled
  // decoding). A tile that covers the latent gives exactly decode(). REQUIRES tile >= 8, 0 <= overlap <= tile / 2.
  Tensor decode_tiled(Ctx& c, const Tensor& z, int64_t tile, int64_t overlap) const;

  // image [B, 3, Hi, Wi] -> scale * (posterior mean - shift) [B, z_channels, h, w].
  Tensor encode(Ctx& c, const Tensor& x, const models::Trace& trace = {}) const;

 private:
  struct Conv {
    Tensor w, b;
  };
  struct Norm {
    Tensor w, b;
  };
  struct Resnet {
    Norm norm1, norm2;
    Conv conv1, conv2;
    std::optional<Conv> shortcut;
  };
  struct Attn {
    Norm norm;
    Conv q, k, v, proj;
  };
  struct Level {
    std::vector<Resnet> blocks;
    std::optional<Conv> resample;   // downsample (encoder) or upsample (decoder)
  };
  struct Tower {
    Conv conv_in, conv_out;
    Resnet mid1, mid2;
    Attn mid_attn;
    Norm norm_out;
    std::vector<Level> levels;      // index = level (decoder runs them from the last to 0)
  };

  Tower load_tower(const io::WeightSet& w, const std::string& prefix, const char* level_name, const char* resample_name);
  Tensor resnet(Ctx& c, const Tensor& x, const Resnet& r) const;
  Tensor attention(Ctx& c, const Tensor& x, const Attn& a) const;
  // The middle of either tower: ResNet, single-head attention, ResNet (traced as mid.*).
  Tensor middle(Ctx& c, Tensor h, const Tower& t, const models::Trace& trace) const;
  Tensor conv(Ctx& c, const Tensor& x, const Conv& k, int stride = 1, bool asymmetric_pad = false) const;
  Tensor norm(Ctx& c, const Tensor& x, const Norm& n, bool silu = false) const;   // GroupNorm(32), SiLU after

  Config cfg_;
  Tower dec_, enc_;
  bool has_encoder_ = false;
};

}  // namespace fluxpipe::vae
