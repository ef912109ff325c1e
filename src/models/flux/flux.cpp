#include "models/flux/flux.h"

#include <cmath>

#include "core/error.h"

namespace fluxpipe::flux {
namespace {

[[noreturn]] void fail(const std::string& why) { throw UserError("[flux] " + why); }

const Tensor& need(const io::WeightSet& w, const std::string& name, const Shape& shape) { return w.expect(name, shape, "flux"); }

Linear linear_of(const io::WeightSet& w, const std::string& prefix, int64_t out, int64_t in, bool bias = true) {
  Linear l;
  l.w = need(w, prefix + ".weight", {out, in});
  if (bias) l.b = need(w, prefix + ".bias", {out});
  if (w.has(prefix + ".scale_weight")) {
    l.scale = w.at(prefix + ".scale_weight");
    if (l.scale.numel() != 1) fail("tensor '" + prefix + ".scale_weight' is " + l.scale.describe() + ", expected one value");
  }
  return l;
}

int count_blocks(const io::WeightSet& w, const std::string& prefix) {
  return std::max(w.count_numbered(prefix, ".linear1.weight"), w.count_numbered(prefix, ".img_mod.lin.weight"));
}

Tensor apply(Ctx& c, const Tensor& x, const Linear& l) {
  if (!l.scale.defined()) return ops::linear(c, x, l.w, l.b.defined() ? &l.b : nullptr);
  // x (s W)ᵀ + b = s (x Wᵀ) + b: the fp8 weights stay fp8 in memory.
  Tensor s = ops::to_dtype(c, l.scale, DType::F32).reshape({1});
  Tensor y = ops::mul(c, ops::linear(c, x, l.w), s);
  return l.b.defined() ? ops::add(c, y, ops::to_dtype(c, l.b, DType::F32)) : y;
}

// [B, k*H] -> k contiguous [B, 1, H] views' copies (modulation chunks, in order).
std::vector<Tensor> chunks(Ctx& c, const Tensor& x, int k) {
  int64_t B = x.size(0), H = x.size(1) / k;
  std::vector<Tensor> out;
  for (int i = 0; i < k; ++i) out.push_back(ops::contiguous(c, x.slice(1, i * H, H)).reshape({B, 1, H}));
  return out;
}

}  // namespace

Config Config::from_weights(const io::WeightSet& w, const nlohmann::json* params) {
  Config cfg;
  const Tensor& img_in = w.at("img_in.weight");
  cfg.hidden = img_in.size(0);
  cfg.in_channels = img_in.size(1);
  cfg.context_in_dim = w.at("txt_in.weight").size(1);
  cfg.vec_in_dim = w.at("vector_in.in_layer.weight").size(1);
  cfg.out_channels = w.at("final_layer.linear.weight").size(0);
  cfg.depth = count_blocks(w, "double_blocks.");
  cfg.depth_single = count_blocks(w, "single_blocks.");
  cfg.guidance_embed = w.has("guidance_in.in_layer.weight");
  if (cfg.depth > 0) {
    cfg.mlp_hidden = w.at("double_blocks.0.img_mlp.0.weight").size(0);
    cfg.head_dim = w.at("double_blocks.0.img_attn.norm.query_norm.scale").size(0);
    cfg.qkv_bias = w.has("double_blocks.0.img_attn.qkv.bias");
  } else if (cfg.depth_single > 0) {
    cfg.head_dim = w.at("single_blocks.0.norm.query_norm.scale").size(0);
    cfg.mlp_hidden = w.at("single_blocks.0.linear1.weight").size(0) - 3 * cfg.hidden;
  } else {
    fail("the weights have no double_blocks.* or single_blocks.* tensors");
  }
  if (cfg.head_dim <= 0 || cfg.hidden % cfg.head_dim != 0) {
    fail("hidden width " + std::to_string(cfg.hidden) + " is not a multiple of the head width " + std::to_string(cfg.head_dim));
  }
  cfg.num_heads = cfg.hidden / cfg.head_dim;
  if (params) {
    if (params->contains("axes_dim")) cfg.axes_dim = params->at("axes_dim").get<std::vector<int>>();
    if (params->contains("theta")) cfg.theta = params->at("theta").get<double>();
    if (params->contains("num_heads") && params->at("num_heads").get<int64_t>() != cfg.num_heads) {
      fail("parameters say num_heads " + std::to_string(params->at("num_heads").get<int64_t>()) + " but the weights' head width " +
           std::to_string(cfg.head_dim) + " gives " + std::to_string(cfg.num_heads));
    }
  }
  if (cfg.axes_dim.empty()) {
    if (cfg.head_dim != 128) {
      fail("RoPE axes for head width " + std::to_string(cfg.head_dim) +
           " cannot be read off the weights: pass the model's parameters (--config, BFL FluxParams JSON)");
    }
    cfg.axes_dim = {16, 56, 56};   // FLUX.1-schnell and -dev
  }
  int sum = 0;
  for (int d : cfg.axes_dim) sum += d;
  if (sum != cfg.head_dim) {
    fail("[rope] head_dim " + std::to_string(cfg.head_dim) + " is not the sum of axes_dim (" + std::to_string(sum) + ")");
  }
  return cfg;
}

Model::Model(Config cfg, const io::WeightSet& w) : cfg_(std::move(cfg)) {
  const int64_t H = cfg_.hidden, M = cfg_.mlp_hidden, D = cfg_.head_dim;
  img_in_ = linear_of(w, "img_in", H, cfg_.in_channels);
  txt_in_ = linear_of(w, "txt_in", H, cfg_.context_in_dim);
  time_in_ = {linear_of(w, "time_in.in_layer", H, 256), linear_of(w, "time_in.out_layer", H, H)};
  vector_in_ = {linear_of(w, "vector_in.in_layer", H, cfg_.vec_in_dim), linear_of(w, "vector_in.out_layer", H, H)};
  if (cfg_.guidance_embed) guidance_in_ = Mlp{linear_of(w, "guidance_in.in_layer", H, 256), linear_of(w, "guidance_in.out_layer", H, H)};
  for (int i = 0; i < cfg_.depth; ++i) {
    std::string p = "double_blocks." + std::to_string(i) + ".";
    Double d;
    for (auto [s, name] : {std::pair{&d.img, "img"}, {&d.txt, "txt"}}) {
      std::string q = p + name;
      s->mod = linear_of(w, q + "_mod.lin", 6 * H, H);
      s->qkv = linear_of(w, q + "_attn.qkv", 3 * H, H, cfg_.qkv_bias);
      s->proj = linear_of(w, q + "_attn.proj", H, H);
      s->mlp0 = linear_of(w, q + "_mlp.0", M, H);
      s->mlp2 = linear_of(w, q + "_mlp.2", H, M);
      s->q_scale = need(w, q + "_attn.norm.query_norm.scale", {D});
      s->k_scale = need(w, q + "_attn.norm.key_norm.scale", {D});
    }
    doubles_.push_back(std::move(d));
  }
  for (int i = 0; i < cfg_.depth_single; ++i) {
    std::string p = "single_blocks." + std::to_string(i) + ".";
    Single s;
    s.linear1 = linear_of(w, p + "linear1", 3 * H + M, H);
    s.linear2 = linear_of(w, p + "linear2", H, H + M);
    s.mod = linear_of(w, p + "modulation.lin", 3 * H, H);
    s.q_scale = need(w, p + "norm.query_norm.scale", {D});
    s.k_scale = need(w, p + "norm.key_norm.scale", {D});
    singles_.push_back(std::move(s));
  }
  final_linear_ = linear_of(w, "final_layer.linear", cfg_.out_channels, H);
  final_mod_ = linear_of(w, "final_layer.adaLN_modulation.1", 2 * H, H);
}

namespace {

struct Rope {
  Tensor cos, sin;   // [B, L, Hd/2]
};

// q, k, v [B, heads, L, Hd] (RoPE applied to q and k already) -> attention [B, L, heads*Hd].
Tensor attend(Ctx& c, const Tensor& q, const Tensor& k, const Tensor& v) {
  int64_t B = q.size(0), heads = q.size(1), L = q.size(2), hd = q.size(3);
  Tensor a = ops::attention(c, q, k, v, 1.0f / std::sqrt(static_cast<float>(hd)));
  return ops::contiguous(c, a.permute({0, 2, 1, 3})).reshape({B, L, heads * hd});
}

// (1 + scale) * LayerNorm(x) + shift, LayerNorm without affine, eps 1e-6 (one fused pass).
Tensor modulate(Ctx& c, const Tensor& x, const Tensor& shift, const Tensor& scale) {
  return ops::layer_norm_modulate(c, x, shift, scale, 1e-6f);
}

}  // namespace

Tensor Model::forward(Ctx& c, const Tensor& img_tokens, const Tensor& img_ids, const Tensor& txt_tokens,
                      const Tensor& txt_ids, const Tensor& timesteps, const Tensor& y, const Tensor* guidance,
                      const Trace& trace) const {
  auto emit = [&](const std::string& n, const Tensor& t) {
    if (trace) trace(n, t);
  };
  const int64_t B = img_tokens.size(0), Li = img_tokens.size(1), Lt = txt_tokens.size(1), H = cfg_.hidden;
  if (img_tokens.dim() != 3 || img_tokens.size(2) != cfg_.in_channels || txt_tokens.dim() != 3 ||
      txt_tokens.size(0) != B || txt_tokens.size(2) != cfg_.context_in_dim || y.dim() != 2 || y.size(0) != B ||
      y.size(1) != cfg_.vec_in_dim || timesteps.dim() != 1 || timesteps.size(0) != B) {
    fail("inputs img " + img_tokens.describe() + ", txt " + txt_tokens.describe() + ", y " + y.describe() +
         ", timesteps " + timesteps.describe() + " do not fit the model (in " + std::to_string(cfg_.in_channels) +
         ", context " + std::to_string(cfg_.context_in_dim) + ", vec " + std::to_string(cfg_.vec_in_dim) + ")");
  }
  if (cfg_.guidance_embed && (!guidance || guidance->numel() != B)) fail("this is a guidance-distilled (dev) model: pass guidance [B]");

  Tensor img = apply(c, img_tokens, img_in_);   // [B, Li, H]
  emit("img_in", img);
  Tensor temb = ops::timestep_embedding(c, timesteps, 256);
  emit("timestep_embedding", temb);
  Tensor vec = apply(c, ops::silu(c, apply(c, temb, time_in_.in)), time_in_.out);   // [B, H]
  emit("time_in", vec);
  if (guidance_in_) {
    Tensor gemb = ops::timestep_embedding(c, *guidance, 256);
    emit("guidance_embedding", gemb);
    Tensor g = apply(c, ops::silu(c, apply(c, gemb, guidance_in_->in)), guidance_in_->out);
    emit("guidance_in", g);
    vec = ops::add(c, vec, g);
  }
  Tensor v_in = apply(c, ops::silu(c, apply(c, y, vector_in_.in)), vector_in_.out);
  emit("vector_in", v_in);
  vec = ops::add(c, vec, v_in);
  emit("vec", vec);
  Tensor txt = apply(c, txt_tokens, txt_in_);   // [B, Lt, H]
  emit("txt_in", txt);
  Tensor silu_vec = ops::silu(c, vec);

  auto [pe_cos, pe_sin] = ops::rope_tables(c, ops::concat(c, {txt_ids, img_ids}, 1), cfg_.axes_dim, cfg_.theta);
  Rope pe{pe_cos, pe_sin};   // [B, L, Hd/2]
  if (trace) {
    // The reference's layout: [B, 1, L, Hd/2, 2, 2] = [[cos, -sin], [sin, cos]].
    std::vector<float> cs = ops::to_host(c, pe.cos).to_floats(), sn = ops::to_host(c, pe.sin).to_floats();
    std::vector<float> m(cs.size() * 4);
    for (size_t i = 0; i < cs.size(); ++i) {
      m[4 * i] = cs[i];
      m[4 * i + 1] = -sn[i];
      m[4 * i + 2] = sn[i];
      m[4 * i + 3] = cs[i];
    }
    emit("pe", Tensor::from_floats({B, 1, Lt + Li, cfg_.head_dim / 2, 2, 2}, m));
  }

  for (size_t i = 0; i < doubles_.size(); ++i) {
    const Double& d = doubles_[i];
    std::string p = "double_blocks." + std::to_string(i) + ".";
    Tensor img_mod_lin = apply(c, silu_vec, d.img.mod), txt_mod_lin = apply(c, silu_vec, d.txt.mod);
    emit(p + "img_mod_lin", img_mod_lin);
    emit(p + "txt_mod_lin", txt_mod_lin);
    std::vector<Tensor> im = chunks(c, img_mod_lin, 6), tm = chunks(c, txt_mod_lin, 6);   // shift1 scale1 gate1 shift2 scale2 gate2
    Tensor img_qkv = apply(c, modulate(c, img, im[0], im[1]), d.img.qkv);
    Tensor txt_qkv = apply(c, modulate(c, txt, tm[0], tm[1]), d.txt.qkv);
    // The joint attention's heads, txt first, each stream's q and k RMS-normed with its scales, then RoPE.
    auto [q, k, v] = ops::qkv_heads(c, {{txt_qkv, d.txt.q_scale, d.txt.k_scale}, {img_qkv, d.img.q_scale, d.img.k_scale}},
                                    cfg_.num_heads, pe.cos, pe.sin, 1e-6f);
    Tensor attn = attend(c, q, k, v);   // [B, L, H], txt first
    Tensor txt_attn = ops::contiguous(c, attn.slice(1, 0, Lt));
    Tensor img_attn = ops::contiguous(c, attn.slice(1, Lt, Li));
    emit(p + "img_attn_out", img_attn);
    emit(p + "txt_attn_out", txt_attn);
    img = ops::add_gated(c, img, im[2], apply(c, img_attn, d.img.proj));
    img = ops::add_gated(c, img, im[5], apply(c, ops::gelu_tanh(c, apply(c, modulate(c, img, im[3], im[4]), d.img.mlp0)), d.img.mlp2));
    txt = ops::add_gated(c, txt, tm[2], apply(c, txt_attn, d.txt.proj));
    txt = ops::add_gated(c, txt, tm[5], apply(c, ops::gelu_tanh(c, apply(c, modulate(c, txt, tm[3], tm[4]), d.txt.mlp0)), d.txt.mlp2));
    emit(p + "img", img);
    emit(p + "txt", txt);
  }

  Tensor x = ops::concat(c, {txt, img}, 1);   // [B, L, H]
  for (size_t i = 0; i < singles_.size(); ++i) {
    const Single& s = singles_[i];
    std::string p = "single_blocks." + std::to_string(i);
    Tensor mod_lin = apply(c, silu_vec, s.mod);
    emit(p + ".modulation_lin", mod_lin);
    std::vector<Tensor> m = chunks(c, mod_lin, 3);   // shift scale gate
    Tensor h = apply(c, modulate(c, x, m[0], m[1]), s.linear1);   // [B, L, 3H + M]
    Tensor qkv = ops::contiguous(c, h.slice(2, 0, 3 * H));
    Tensor mlp = ops::contiguous(c, h.slice(2, 3 * H, cfg_.mlp_hidden));
    auto [q, k, v] = ops::qkv_heads(c, {{qkv, s.q_scale, s.k_scale}}, cfg_.num_heads, pe.cos, pe.sin, 1e-6f);
    Tensor l2_in = ops::concat(c, {attend(c, q, k, v), ops::gelu_tanh(c, mlp)}, 2);
    emit(p + ".linear2_in", l2_in);
    x = ops::add_gated(c, x, m[2], apply(c, l2_in, s.linear2));
    emit(p, x);
  }
  img = ops::contiguous(c, x.slice(1, Lt, Li));
  emit("final_layer_in", img);
  Tensor ada = apply(c, silu_vec, final_mod_);   // [B, 2H] = shift | scale
  emit("final_layer.adaLN_out", ada);
  std::vector<Tensor> sm = chunks(c, ada, 2);
  return apply(c, modulate(c, img, sm[0], sm[1]), final_linear_);
}

}  // namespace fluxpipe::flux
