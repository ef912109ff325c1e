#include "models/vae/vae.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace fluxpipe::vae {
namespace {

[[noreturn]] void fail(const std::string& why) { throw UserError("[vae] " + why); }

// Between the callers' nchw tensors and the layout the towers compute in (ops::image_layout:
// nhwc on the CPU, whose convolutions work in it, so only the tower's input and output are
// transposed, not every convolution's).
Tensor into_layout(Ctx& c, const Tensor& nchw) {
  return ops::image_layout(c) == Layout::nhwc ? ops::contiguous(c, nchw.permute({0, 2, 3, 1})) : nchw;
}
Tensor to_nchw(Ctx& c, const Tensor& t) {
  return ops::image_layout(c) == Layout::nhwc ? ops::contiguous(c, t.permute({0, 3, 1, 2})) : t;
}

}  // namespace

Config Config::from_weights(const io::WeightSet& w, const nlohmann::json* params) {
  Config cfg;
  const Tensor& conv_in = w.at("decoder.conv_in.weight");
  if (conv_in.dim() != 4) fail("decoder.conv_in.weight is " + conv_in.describe() + ", expected [C, z, 3, 3]");
  cfg.z_channels = conv_in.size(1);
  if (params) {
    if (params->contains("scale_factor")) cfg.scale_factor = params->at("scale_factor").get<float>();
    if (params->contains("shift_factor")) cfg.shift_factor = params->at("shift_factor").get<float>();
    if (params->contains("z_channels") && params->at("z_channels").get<int64_t>() != cfg.z_channels) {
      fail("parameters say z_channels " + std::to_string(params->at("z_channels").get<int64_t>()) + " but the decoder takes " +
           std::to_string(cfg.z_channels));
    }
  }
  return cfg;
}

Model::Tower Model::load_tower(const io::WeightSet& w, const std::string& p, const char* level_name,
                               const char* resample_name) {
  auto conv = [&](const std::string& name) {
    Conv k{w.at(name + ".weight"), w.at(name + ".bias")};
    if (k.w.dim() != 4 || k.b.dim() != 1 || k.b.size(0) != k.w.size(0)) {
      fail("'" + name + "' is " + k.w.describe() + " + " + k.b.describe() + ", expected a conv [out, in, kh, kw] + [out]");
    }
    return k;
  };
  auto norm = [&](const std::string& name) { return Norm{w.at(name + ".weight"), w.at(name + ".bias")}; };
  auto resnet = [&](const std::string& name) {
    Resnet r{norm(name + ".norm1"), norm(name + ".norm2"), conv(name + ".conv1"), conv(name + ".conv2"), std::nullopt};
    if (w.has(name + ".nin_shortcut.weight")) r.shortcut = conv(name + ".nin_shortcut");
    if (!r.shortcut && r.conv1.w.size(1) != r.conv2.w.size(0)) fail("'" + name + "' changes channels but has no nin_shortcut");
    return r;
  };
  Tower t;
  t.conv_in = conv(p + "conv_in");
  t.conv_out = conv(p + "conv_out");
  t.mid1 = resnet(p + "mid.block_1");
  t.mid2 = resnet(p + "mid.block_2");
  t.mid_attn = {norm(p + "mid.attn_1.norm"), conv(p + "mid.attn_1.q"), conv(p + "mid.attn_1.k"), conv(p + "mid.attn_1.v"),
                conv(p + "mid.attn_1.proj_out")};
  t.norm_out = norm(p + "norm_out");
  int levels = w.count_numbered(p + level_name + ".", ".block.0.conv1.weight");
  if (levels == 0) fail("no " + p + level_name + ".<i> levels in the weights");
  for (int i = 0; i < levels; ++i) {
    std::string lp = p + level_name + "." + std::to_string(i);
    Level l;
    int blocks = w.count_numbered(lp + ".block.", ".conv1.weight");
    for (int j = 0; j < blocks; ++j) l.blocks.push_back(resnet(lp + ".block." + std::to_string(j)));
    if (w.has(lp + "." + resample_name + ".conv.weight")) l.resample = conv(lp + "." + resample_name + ".conv");
    t.levels.push_back(std::move(l));
  }
  return t;
}

Model::Model(Config cfg, const io::WeightSet& w) : cfg_(cfg) {
  dec_ = load_tower(w, "decoder.", "up", "upsample");
  has_encoder_ = w.has("encoder.conv_in.weight");
  if (has_encoder_) enc_ = load_tower(w, "encoder.", "down", "downsample");
}

int64_t Model::spatial_factor() const {
  int64_t f = 1;
  for (const Level& l : dec_.levels) f *= l.resample ? 2 : 1;
  return f;
}

Tensor Model::conv(Ctx& c, const Tensor& x, const Conv& k, int stride, bool asymmetric_pad) const {
  Conv2dParams p;
  p.stride = stride;
  if (asymmetric_pad) {   // Downsample: zero pad right and bottom by one, no padding before
    p.pad_bottom = p.pad_right = 1;
  } else {
    p.pad_top = p.pad_bottom = static_cast<int>(k.w.size(2) / 2);
    p.pad_left = p.pad_right = static_cast<int>(k.w.size(3) / 2);
  }
  p.layout = ops::image_layout(c);
  return ops::conv2d(c, x, k.w, &k.b, p);
}

Tensor Model::norm(Ctx& c, const Tensor& x, const Norm& n, bool silu) const {
  return ops::group_norm(c, x, 32, &n.w, &n.b, 1e-6f, silu, ops::image_layout(c));
}

Tensor Model::resnet(Ctx& c, const Tensor& x, const Resnet& r) const {
  Tensor h = conv(c, norm(c, x, r.norm1, true), r.conv1);
  h = conv(c, norm(c, h, r.norm2, true), r.conv2);
  return ops::add(c, r.shortcut ? conv(c, x, *r.shortcut) : x, h);
}

Tensor Model::attention(Ctx& c, const Tensor& x, const Attn& a) const {
  // Single head over the h*w positions, scale 1/sqrt(C). In nhwc the positions' channels are
  // rows already; in nchw they are transposed to rows and back.
  const bool nhwc = ops::image_layout(c) == Layout::nhwc;
  const int64_t B = x.size(0), C = x.size(nhwc ? 3 : 1), h = x.size(nhwc ? 1 : 2), w = x.size(nhwc ? 2 : 3);
  Tensor n = norm(c, x, a.norm);
  auto tokens = [&](const Tensor& t) {
    return nhwc ? t.reshape({B, 1, h * w, C}) : ops::contiguous(c, t.reshape({B, C, h * w}).permute({0, 2, 1})).reshape({B, 1, h * w, C});
  };
  Tensor q = tokens(conv(c, n, a.q)), k = tokens(conv(c, n, a.k)), v = tokens(conv(c, n, a.v));
  Tensor o = ops::attention(c, q, k, v, 1.0f / std::sqrt(static_cast<float>(C)));   // [B, 1, hw, C]
  Tensor back = nhwc ? o.reshape({B, h, w, C}) : ops::contiguous(c, o.reshape({B, h * w, C}).permute({0, 2, 1})).reshape({B, C, h, w});
  return ops::add(c, x, conv(c, back, a.proj));
}

Tensor Model::middle(Ctx& c, Tensor h, const Tower& t, const models::Trace& trace) const {
  h = resnet(c, h, t.mid1);
  if (trace) trace("mid.block_1", to_nchw(c, h));
  h = attention(c, h, t.mid_attn);
  if (trace) trace("mid.attn_1", to_nchw(c, h));
  h = resnet(c, h, t.mid2);
  if (trace) trace("mid.block_2", to_nchw(c, h));
  return h;
}

Tensor Model::decode(Ctx& c, const Tensor& z, const models::Trace& trace) const {
  auto emit = [&](const std::string& n, const Tensor& t) {   // t in the tower's layout; traces are nchw
    if (trace) trace(n, to_nchw(c, t));
  };
  if (z.dim() != 4 || z.size(1) != cfg_.z_channels) {
    fail("decode: z " + z.describe() + " must be [B, " + std::to_string(cfg_.z_channels) + ", h, w]");
  }
  Tensor scale = ops::constant(c, {1}, {cfg_.scale_factor}), shift = ops::constant(c, {1}, {cfg_.shift_factor});
  // z / scale + shift, as a division (not a multiply by the reciprocal) like the reference.
  Tensor x = into_layout(c, ops::add(c, ops::div(c, z, scale), shift));
  emit("decoder_in", x);
  Tensor h = conv(c, x, dec_.conv_in);
  emit("conv_in", h);
  h = middle(c, h, dec_, trace);
  for (size_t lv = dec_.levels.size(); lv-- > 0;) {
    const Level& l = dec_.levels[lv];
    for (size_t j = 0; j < l.blocks.size(); ++j) {
      h = resnet(c, h, l.blocks[j]);
      emit("up." + std::to_string(lv) + ".block." + std::to_string(j), h);
    }
    if (l.resample) {
      h = conv(c, ops::upsample_nearest2x(c, h, ops::image_layout(c)), *l.resample);
      emit("up." + std::to_string(lv) + ".upsample", h);
    }
  }
  if (!trace) return to_nchw(c, conv(c, norm(c, h, dec_.norm_out, true), dec_.conv_out));
  h = norm(c, h, dec_.norm_out);
  emit("norm_out", h);
  return to_nchw(c, conv(c, ops::silu(c, h), dec_.conv_out));
}

std::vector<Span> tile_spans(int64_t size, int64_t tile, int64_t overlap) {
  if (tile < 1 || overlap < 0 || overlap >= tile) fail("tile_spans: tile " + std::to_string(tile) + ", overlap " + std::to_string(overlap));
  std::vector<Span> spans;
  if (size <= tile) return {{0, size}};
  const int64_t stride = tile - overlap;
  for (int64_t b = 0;; b += stride) {
    if (b + tile >= size) {
      spans.push_back({size - tile, size});
      break;
    }
    spans.push_back({b, b + tile});
  }
  return spans;
}

namespace {

// Blend weights along one image axis for the tile covering image pixels [b, e) of [0, n):
// a linear ramp over the part shared with the previous / next tile, 1 elsewhere. Positive
// everywhere, so every pixel has weight from at least one tile.
std::vector<float> ramp(int64_t b, int64_t e, int64_t prev_end, int64_t next_begin) {
  std::vector<float> w(static_cast<size_t>(e - b), 1.0f);
  for (int64_t i = b; i < e; ++i) {
    float v = 1.0f;
    if (i < prev_end) v = std::min(v, (static_cast<float>(i - b) + 0.5f) / static_cast<float>(prev_end - b));
    if (i >= next_begin) v = std::min(v, (static_cast<float>(e - i) - 0.5f) / static_cast<float>(e - next_begin));
    w[static_cast<size_t>(i - b)] = v;
  }
  return w;
}

}  // namespace

Tensor Model::decode_tiled(Ctx& c, const Tensor& z, int64_t tile, int64_t overlap) const {
  if (z.dim() != 4 || z.size(1) != cfg_.z_channels) {
    fail("decode_tiled: z " + z.describe() + " must be [B, " + std::to_string(cfg_.z_channels) + ", h, w]");
  }
  if (tile < 8 || overlap < 0 || overlap > tile / 2) {
    fail("decode_tiled: tile " + std::to_string(tile) + " with overlap " + std::to_string(overlap) +
         " (need tile >= 8 and overlap <= tile / 2)");
  }
  if (z.size(2) <= tile && z.size(3) <= tile) return decode(c, z);
  return decode_in_tiles(c, z, spatial_factor(), tile, overlap, [&](const Tensor& part) { return decode(c, part); });
}

Tensor decode_in_tiles(Ctx& c, const Tensor& z, int64_t f, int64_t tile, int64_t overlap,
                       const std::function<Tensor(const Tensor&)>& decode_tile) {
  const int64_t B = z.size(0), h = z.size(2), w = z.size(3);
  const std::vector<Span> ys = tile_spans(h, tile, overlap), xs = tile_spans(w, tile, overlap);
  const int64_t H = h * f, W = w * f;
  Tensor zc = z.is_contiguous() ? z : ops::contiguous(c, z);
  Tensor acc = ops::zeros(c, {B, 3, H, W}, DType::F32), wsum = ops::zeros(c, {H, W}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    for (size_t ty = 0; ty < ys.size(); ++ty) {
      for (size_t tx = 0; tx < xs.size(); ++tx) {
        const Span sy = ys[ty], sx = xs[tx];
        Tensor part = ops::contiguous(c, zc.slice(0, b, 1).slice(2, sy.begin, sy.end - sy.begin).slice(3, sx.begin, sx.end - sx.begin));
        Tensor img = decode_tile(part);   // [1, 3, th*f, tw*f]
        const int64_t y0 = sy.begin * f, y1 = sy.end * f, x0 = sx.begin * f, x1 = sx.end * f, th = y1 - y0, tw = x1 - x0;
        if (img.dim() != 4 || img.size(0) != 1 || img.size(1) != 3 || img.size(2) != th || img.size(3) != tw || img.dtype() != DType::F32) {
          fail("decode_in_tiles: a tile decoded to " + img.describe() + ", expected F32[1, 3, " + std::to_string(th) + ", " +
               std::to_string(tw) + "]");
        }
        img = img.is_contiguous() ? img : ops::contiguous(c, img);
        // The ramps depend on the tile geometry alone: made on the host, used where the tile is.
        Tensor wy = ops::constant(c, {th}, ramp(y0, y1, ty > 0 ? ys[ty - 1].end * f : y0, ty + 1 < ys.size() ? ys[ty + 1].begin * f : y1));
        Tensor wx = ops::constant(c, {tw}, ramp(x0, x1, tx > 0 ? xs[tx - 1].end * f : x0, tx + 1 < xs.size() ? xs[tx + 1].begin * f : x1));
        ops::blend_tile(c, img, wy, wx, b, y0, x0, acc, b == 0 ? &wsum : nullptr);
      }
    }
  }
  return ops::div(c, acc, wsum);   // [B, 3, H, W] / [H, W]
}

Tensor Model::encode(Ctx& c, const Tensor& x, const models::Trace& trace) const {
  auto emit = [&](const std::string& n, const Tensor& t) {   // t in the tower's layout; traces are nchw
    if (trace) trace(n, to_nchw(c, t));
  };
  if (!has_encoder_) fail("these weights have no encoder");
  if (x.dim() != 4 || x.size(1) != enc_.conv_in.w.size(1)) fail("encode: x " + x.describe() + " must be [B, 3, H, W]");
  Tensor h = conv(c, into_layout(c, x), enc_.conv_in);
  emit("conv_in", h);
  for (size_t lv = 0; lv < enc_.levels.size(); ++lv) {
    const Level& l = enc_.levels[lv];
    for (size_t j = 0; j < l.blocks.size(); ++j) {
      h = resnet(c, h, l.blocks[j]);
      emit("down." + std::to_string(lv) + ".block." + std::to_string(j), h);
    }
    if (l.resample) {
      h = conv(c, h, *l.resample, 2, true);
      emit("down." + std::to_string(lv) + ".downsample", h);
    }
  }
  h = middle(c, h, enc_, trace);
  h = norm(c, h, enc_.norm_out);
  emit("norm_out", h);
  Tensor moments = to_nchw(c, conv(c, ops::silu(c, h), enc_.conv_out));
  if (trace) trace("moments", moments);
  Tensor mean = ops::contiguous(c, moments.slice(1, 0, cfg_.z_channels));
  Tensor scale = ops::constant(c, {1}, {cfg_.scale_factor}), shift = ops::constant(c, {1}, {cfg_.shift_factor});
  return ops::mul(c, scale, ops::sub(c, mean, shift));
}

}  // namespace fluxpipe::vae
