#include "models/text/encoders.h"

#include <cmath>

#include "core/error.h"

namespace fluxpipe::text {
namespace {

[[noreturn]] void fail(const std::string& why) { throw UserError("[text encoder] " + why); }

const Tensor& need(const io::WeightSet& w, const std::string& name, const Shape& shape) {
  return w.expect(name, shape, "text encoder");
}

Tensor f32(Ctx& c, const Tensor& t) { return t.dtype() == DType::F32 ? t : ops::to_dtype(c, t, DType::F32); }

Tensor lin(Ctx& c, const Tensor& x, const models::Linear& l) {
  Tensor b = l.b.defined() ? f32(c, l.b) : Tensor();
  return ops::linear(c, x, l.w, l.b.defined() ? &b : nullptr);
}

// [B, T, heads*hd] -> [B, heads, T, hd] and back.
Tensor split_heads(Ctx& c, const Tensor& x, int64_t heads) {
  int64_t B = x.size(0), T = x.size(1), hd = x.size(2) / heads;
  return ops::contiguous(c, x.reshape({B, T, heads, hd}).permute({0, 2, 1, 3}));
}
Tensor merge_heads(Ctx& c, const Tensor& x) {
  int64_t B = x.size(0), heads = x.size(1), T = x.size(2), hd = x.size(3);
  return ops::contiguous(c, x.permute({0, 2, 1, 3})).reshape({B, T, heads * hd});
}

}  // namespace

ClipConfig ClipConfig::from_weights(const io::WeightSet& w, const nlohmann::json* hf) {
  ClipConfig cfg;
  const Tensor& tok = w.at("text_model.embeddings.token_embedding.weight");
  cfg.vocab = tok.size(0);
  cfg.hidden = tok.size(1);
  cfg.positions = w.at("text_model.embeddings.position_embedding.weight").size(0);
  cfg.layers = w.count_numbered("text_model.encoder.layers.", ".self_attn.q_proj.weight");
  if (cfg.layers == 0) fail("no text_model.encoder.layers.* tensors");
  cfg.intermediate = w.at("text_model.encoder.layers.0.mlp.fc1.weight").size(0);
  if (hf) {
    cfg.heads = hf->value("num_attention_heads", int64_t{0});
    cfg.eps = hf->value("layer_norm_eps", 1e-5f);
    std::string act = hf->value("hidden_act", std::string("quick_gelu"));
    if (act == "quick_gelu") cfg.act = Unary::quick_gelu;
    else if (act == "gelu") cfg.act = Unary::gelu_erf;
    else if (act == "gelu_new" || act == "gelu_pytorch_tanh") cfg.act = Unary::gelu_tanh;
    else fail("unsupported CLIP hidden_act '" + act + "'");
  }
  if (cfg.heads == 0) {
    if (cfg.hidden != 768) fail("the CLIP head count cannot be read off the weights: pass its config.json (--config)");
    cfg.heads = 12;   // CLIP ViT-L/14's text tower
  }
  if (cfg.hidden % cfg.heads) fail("hidden " + std::to_string(cfg.hidden) + " is not a multiple of " + std::to_string(cfg.heads) + " heads");
  return cfg;
}

ClipTextModel::ClipTextModel(ClipConfig cfg, const io::WeightSet& w) : cfg_(cfg) {
  const int64_t H = cfg_.hidden, I = cfg_.intermediate;
  token_embedding_ = need(w, "text_model.embeddings.token_embedding.weight", {cfg_.vocab, H});
  position_embedding_ = need(w, "text_model.embeddings.position_embedding.weight", {cfg_.positions, H});
  final_w_ = need(w, "text_model.final_layer_norm.weight", {H});
  final_b_ = need(w, "text_model.final_layer_norm.bias", {H});
  auto linear = [&](const std::string& p, int64_t out, int64_t in) {
    return models::Linear{need(w, p + ".weight", {out, in}), need(w, p + ".bias", {out}), Tensor()};
  };
  for (int i = 0; i < cfg_.layers; ++i) {
    std::string p = "text_model.encoder.layers." + std::to_string(i);
    layers_.push_back({linear(p + ".self_attn.q_proj", H, H), linear(p + ".self_attn.k_proj", H, H),
                       linear(p + ".self_attn.v_proj", H, H), linear(p + ".self_attn.out_proj", H, H),
                       linear(p + ".mlp.fc1", I, H), linear(p + ".mlp.fc2", H, I), need(w, p + ".layer_norm1.weight", {H}),
                       need(w, p + ".layer_norm1.bias", {H}), need(w, p + ".layer_norm2.weight", {H}),
                       need(w, p + ".layer_norm2.bias", {H})});
  }
}

ClipOutput ClipTextModel::forward(Ctx& c, const Tensor& ids) const {
  if (ids.dim() != 2 || ids.size(1) > cfg_.positions) {
    fail("CLIP input_ids " + ids.describe() + " must be [B, T] with T <= " + std::to_string(cfg_.positions));
  }
  int64_t B = ids.size(0), T = ids.size(1);
  Tensor positions = ops::arange_ids(c, B, T);
  Tensor x = ops::add(c, ops::embedding(c, token_embedding_, ids), ops::embedding(c, position_embedding_, positions));
  const float scale = 1.0f / std::sqrt(static_cast<float>(cfg_.hidden / cfg_.heads));
  for (const Layer& l : layers_) {
    Tensor w1 = f32(c, l.ln1_w), b1 = f32(c, l.ln1_b), w2 = f32(c, l.ln2_w), b2 = f32(c, l.ln2_b);
    Tensor h = ops::layer_norm(c, x, &w1, &b1, cfg_.eps);
    Tensor q = split_heads(c, lin(c, h, l.q), cfg_.heads), k = split_heads(c, lin(c, h, l.k), cfg_.heads),
           v = split_heads(c, lin(c, h, l.v), cfg_.heads);
    Tensor a = merge_heads(c, ops::attention(c, q, k, v, scale, nullptr, /*causal=*/true));
    x = ops::add(c, x, lin(c, a, l.out));
    h = ops::layer_norm(c, x, &w2, &b2, cfg_.eps);
    Tensor f = lin(c, h, l.fc1);
    f = cfg_.act == Unary::quick_gelu ? ops::quick_gelu(c, f) : cfg_.act == Unary::gelu_erf ? ops::gelu_erf(c, f) : ops::gelu_tanh(c, f);
    x = ops::add(c, x, lin(c, f, l.fc2));
  }
  Tensor fw = f32(c, final_w_), fb = f32(c, final_b_);
  Tensor last = ops::layer_norm(c, x, &fw, &fb, cfg_.eps);
  return {last, ops::gather_rows_at_argmax(c, last, ids)};
}

T5Config T5Config::from_weights(const io::WeightSet& w, const nlohmann::json* hf) {
  T5Config cfg;
  const Tensor& shared = w.has("shared.weight") ? w.at("shared.weight") : w.at("encoder.embed_tokens.weight");
  cfg.vocab = shared.size(0);
  cfg.d_model = shared.size(1);
  cfg.layers = w.count_numbered("encoder.block.", ".layer.0.SelfAttention.q.weight");
  if (cfg.layers == 0) fail("no encoder.block.* tensors");
  int64_t inner = w.at("encoder.block.0.layer.0.SelfAttention.q.weight").size(0);
  cfg.d_ff = w.at("encoder.block.0.layer.1.DenseReluDense.wi_0.weight").size(0);
  cfg.buckets = w.at("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").size(0);
  if (hf) {
    cfg.heads = hf->value("num_heads", int64_t{0});
    cfg.eps = hf->value("layer_norm_epsilon", 1e-6f);
    cfg.max_distance = hf->value("relative_attention_max_distance", 128);
    std::string ff = hf->value("feed_forward_proj", std::string("gated-gelu"));
    if (ff != "gated-gelu") fail("unsupported T5 feed_forward_proj '" + ff + "' (FLUX uses gated-gelu)");
  }
  if (cfg.heads == 0) cfg.heads = w.at("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").size(1);
  if (inner % cfg.heads) fail("attention width " + std::to_string(inner) + " is not a multiple of " + std::to_string(cfg.heads) + " heads");
  cfg.d_kv = inner / cfg.heads;
  return cfg;
}

T5Encoder::T5Encoder(T5Config cfg, const io::WeightSet& w) : cfg_(cfg) {
  const int64_t D = cfg_.d_model, I = cfg_.heads * cfg_.d_kv, F = cfg_.d_ff;
  shared_ = need(w, w.has("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight", {cfg_.vocab, D});
  rel_bias_ = need(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {cfg_.buckets, cfg_.heads});
  final_ln_ = need(w, "encoder.final_layer_norm.weight", {D});
  for (int i = 0; i < cfg_.layers; ++i) {
    std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    blocks_.push_back({need(w, p + "0.SelfAttention.q.weight", {I, D}), need(w, p + "0.SelfAttention.k.weight", {I, D}),
                       need(w, p + "0.SelfAttention.v.weight", {I, D}), need(w, p + "0.SelfAttention.o.weight", {D, I}),
                       need(w, p + "0.layer_norm.weight", {D}), need(w, p + "1.DenseReluDense.wi_0.weight", {F, D}),
                       need(w, p + "1.DenseReluDense.wi_1.weight", {F, D}), need(w, p + "1.DenseReluDense.wo.weight", {D, F}),
                       need(w, p + "1.layer_norm.weight", {D})});
  }
}

Tensor T5Encoder::forward(Ctx& c, const Tensor& ids, const Tensor* mask) const {
  if (ids.dim() != 2) fail("T5 input_ids " + ids.describe() + " must be [B, L]");
  if (mask && mask->shape() != ids.shape()) fail("attention_mask " + mask->describe() + " must match input_ids " + ids.describe());
  int64_t L = ids.size(1);
  Tensor x = ops::embedding(c, shared_, ids);   // [B, L, D], not scaled
  // One relative-position bias table (block 0's) for every block; [1|B, heads, L, L].
  Tensor bias = ops::t5_position_bias(c, ops::to_dtype(c, rel_bias_, DType::F32), L, L, cfg_.max_distance, mask);
  for (const Block& b : blocks_) {
    Tensor h = ops::rms_norm(c, x, &b.ln_attn, cfg_.eps);
    Tensor q = split_heads(c, ops::linear(c, h, b.q), cfg_.heads), k = split_heads(c, ops::linear(c, h, b.k), cfg_.heads),
           v = split_heads(c, ops::linear(c, h, b.v), cfg_.heads);
    Tensor a = merge_heads(c, ops::attention(c, q, k, v, /*scale=*/1.0f, &bias));
    x = ops::add(c, x, ops::linear(c, a, b.o));
    h = ops::rms_norm(c, x, &b.ln_ff, cfg_.eps);
    Tensor g = ops::mul(c, ops::gelu_tanh(c, ops::linear(c, h, b.wi0)), ops::linear(c, h, b.wi1));
    x = ops::add(c, x, ops::linear(c, g, b.wo));
  }
  return ops::rms_norm(c, x, &final_ln_, cfg_.eps);
}

}  // namespace fluxpipe::text
