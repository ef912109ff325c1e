#include "pipeline/test_model.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/weights.h"

namespace fluxpipe {
namespace {

struct Writer {
  uint64_t state;
  io::NamedTensors tensors;

  float uniform() {   // xorshift64*, [-1, 1)
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return static_cast<float>(static_cast<double>((state * 2685821657736338717ULL) >> 11) / static_cast<double>(uint64_t{1} << 52) - 1.0);
  }
  void put(const std::string& name, const Shape& shape, float scale, float offset = 0.0f) {
    Tensor t = Tensor::zeros(shape, DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = offset + scale * uniform();
    tensors.push_back({name, t});
  }
  void linear(const std::string& n, int64_t out, int64_t in, bool bias = true) {
    put(n + ".weight", {out, in}, std::sqrt(3.0f / static_cast<float>(in)));
    if (bias) put(n + ".bias", {out}, 0.05f);
  }
  void conv(const std::string& n, int64_t out, int64_t in, int64_t k) {
    put(n + ".weight", {out, in, k, k}, std::sqrt(3.0f / static_cast<float>(in * k * k)));
    put(n + ".bias", {out}, 0.05f);
  }
  void norm(const std::string& n, int64_t c, bool bias = true) {
    put(n + ".weight", {c}, 0.1f, 1.0f);
    if (bias) put(n + ".bias", {c}, 0.1f);
  }
  void save(const std::string& path) {
    io::write_safetensors(path, tensors, {{"fluxpipe.test_model", "random weights at toy widths; not FLUX.1, draws noise"}});
    tensors.clear();
  }
};

constexpr int64_t H = 32, HD = 16, MLP = 128, CTX = 32, VEC = 32;   // transformer
constexpr int64_t CLIP_H = VEC, CLIP_V = 49408, T5_D = CTX, T5_V = 32128;

}  // namespace

void write_test_model(const std::string& dir, uint64_t seed) {
  mkdir(dir.c_str(), 0755);
  Writer w{seed * 0x9E3779B97F4A7C15ULL + 1, {}};

  // Transformer, BFL names: 1 double + 1 single block.
  w.linear("img_in", H, 64);
  w.linear("txt_in", H, CTX);
  w.linear("time_in.in_layer", H, 256);
  w.linear("time_in.out_layer", H, H);
  w.linear("vector_in.in_layer", H, VEC);
  w.linear("vector_in.out_layer", H, H);
  for (const char* s : {"img", "txt"}) {
    std::string p = std::string("double_blocks.0.") + s;
    w.linear(p + "_mod.lin", 6 * H, H);
    w.linear(p + "_attn.qkv", 3 * H, H);
    w.put(p + "_attn.norm.query_norm.scale", {HD}, 0.1f, 1.0f);
    w.put(p + "_attn.norm.key_norm.scale", {HD}, 0.1f, 1.0f);
    w.linear(p + "_attn.proj", H, H);
    w.linear(p + "_mlp.0", MLP, H);
    w.linear(p + "_mlp.2", H, MLP);
  }
  w.linear("single_blocks.0.linear1", 3 * H + MLP, H);
  w.linear("single_blocks.0.linear2", H, H + MLP);
  w.put("single_blocks.0.norm.query_norm.scale", {HD}, 0.1f, 1.0f);
  w.put("single_blocks.0.norm.key_norm.scale", {HD}, 0.1f, 1.0f);
  w.linear("single_blocks.0.modulation.lin", 3 * H, H);
  w.linear("final_layer.linear", 64, H);
  w.linear("final_layer.adaLN_modulation.1", 2 * H, H);
  w.save(dir + "/flux1-test.safetensors");

  // Autoencoder, BFL names: channels 32, 32, 64, 64 (three 2x levels: 8 pixels per latent pixel).
  const int64_t ch[] = {32, 32, 64, 64};
  auto resnet = [&](const std::string& n, int64_t in, int64_t out) {
    w.norm(n + ".norm1", in);
    w.conv(n + ".conv1", out, in, 3);
    w.norm(n + ".norm2", out);
    w.conv(n + ".conv2", out, out, 3);
    if (in != out) w.conv(n + ".nin_shortcut", out, in, 1);
  };
  auto mid = [&](const std::string& p, int64_t c) {
    resnet(p + "mid.block_1", c, c);
    w.norm(p + "mid.attn_1.norm", c);
    for (const char* k : {"q", "k", "v", "proj_out"}) w.conv(p + "mid.attn_1." + k, c, c, 1);
    resnet(p + "mid.block_2", c, c);
  };
  w.conv("encoder.conv_in", ch[0], 3, 3);
  int64_t in = ch[0];
  for (int l = 0; l < 4; ++l) {
    resnet("encoder.down." + std::to_string(l) + ".block.0", in, ch[l]);
    in = ch[l];
    if (l != 3) w.conv("encoder.down." + std::to_string(l) + ".downsample.conv", in, in, 3);
  }
  mid("encoder.", in);
  w.norm("encoder.norm_out", in);
  w.conv("encoder.conv_out", 32, in, 3);
  w.conv("decoder.conv_in", ch[3], 16, 3);
  mid("decoder.", ch[3]);
  in = ch[3];
  for (int l = 3; l >= 0; --l) {
    for (int j = 0; j < 2; ++j) {
      resnet("decoder.up." + std::to_string(l) + ".block." + std::to_string(j), in, ch[l]);
      in = ch[l];
    }
    if (l != 0) w.conv("decoder.up." + std::to_string(l) + ".upsample.conv", in, in, 3);
  }
  w.norm("decoder.norm_out", in);
  w.conv("decoder.conv_out", 3, in, 3);
  w.save(dir + "/ae.safetensors");

  // CLIP text tower, HF names, the real vocabulary and 77 positions.
  w.put("text_model.embeddings.token_embedding.weight", {CLIP_V, CLIP_H}, 0.5f);
  w.put("text_model.embeddings.position_embedding.weight", {77, CLIP_H}, 0.2f);
  std::string l = "text_model.encoder.layers.0.";
  for (const char* p : {"q_proj", "k_proj", "v_proj", "out_proj"}) w.linear(l + "self_attn." + p, CLIP_H, CLIP_H);
  w.norm(l + "layer_norm1", CLIP_H);
  w.norm(l + "layer_norm2", CLIP_H);
  w.linear(l + "mlp.fc1", 2 * CLIP_H, CLIP_H);
  w.linear(l + "mlp.fc2", CLIP_H, 2 * CLIP_H);
  w.norm("text_model.final_layer_norm", CLIP_H);
  w.save(dir + "/clip_l.safetensors");

  // T5 encoder, HF names, the real vocabulary.
  w.put("shared.weight", {T5_V, T5_D}, 1.0f);
  std::string b = "encoder.block.0.layer.";
  for (const char* p : {"q", "k", "v", "o"}) w.linear(b + "0.SelfAttention." + p, T5_D, T5_D, false);
  w.put(b + "0.SelfAttention.relative_attention_bias.weight", {32, 2}, 0.5f);
  w.norm(b + "0.layer_norm", T5_D, false);
  w.linear(b + "1.DenseReluDense.wi_0", 2 * T5_D, T5_D, false);
  w.linear(b + "1.DenseReluDense.wi_1", 2 * T5_D, T5_D, false);
  w.linear(b + "1.DenseReluDense.wo", T5_D, 2 * T5_D, false);
  w.norm(b + "1.layer_norm", T5_D, false);
  w.norm("encoder.final_layer_norm", T5_D, false);
  w.save(dir + "/t5xxl.safetensors");

  nlohmann::json config = {
      {"name", "fluxpipe-test-model"},
      {"test_model", true},
      {"note", "random weights at toy widths with FLUX.1's architecture; not a model: it draws noise"},
      {"transformer", {{"axes_dim", {4, 6, 6}}, {"theta", 10000}, {"num_heads", H / HD}}},
      {"ae", {{"scale_factor", 0.3611}, {"shift_factor", 0.1159}}},
      {"clip", {{"num_attention_heads", 2}, {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}}},
      {"t5", {{"num_heads", 2}, {"layer_norm_epsilon", 1e-6}, {"relative_attention_max_distance", 128}, {"feed_forward_proj", "gated-gelu"}}}};
  std::ofstream(dir + "/fluxpipe.json") << config.dump(2) << "\n";
}

}  // namespace fluxpipe
