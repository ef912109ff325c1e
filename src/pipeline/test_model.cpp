#include "pipeline/pipeline.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/name_maps.h"
#include "io/weights.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe {
namespace {

struct Writer {
  uint64_t state;
  io::NamedTensors tensors;
  DType matrix_dtype = DType::F32;   // BF16 at the real width
  std::optional<DType> quant;        // set: matrices whose rows fit its blocks are made in it directly

  float uniform() {   // xorshift64*, [-1, 1)
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return static_cast<float>(static_cast<double>((state * 2685821657736338717ULL) >> 11) / static_cast<double>(uint64_t{1} << 52) - 1.0);
  }
  void put(const std::string& name, const Shape& shape, float scale, float offset = 0.0f) {
    std::vector<float> v(static_cast<size_t>(numel(shape)));
    for (float& x : v) x = offset + scale * uniform();
    DType dt = shape.size() >= 2 ? matrix_dtype : DType::F32;
    if (quant && shape.size() == 2 && shape[1] % info(*quant).block_elems == 0) dt = *quant;
    Tensor t = Tensor::zeros(shape, dt);
    from_f32(dt, v.data(), t.data<uint8_t>(), t.numel());
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
  std::string layout = "bfl";
  io::NamedTensors all_in_one;   // comfyui: every part in one file under ComfyUI's prefixes
  std::map<std::string, io::NamedTensors> parts;   // diffusers: by ComfyUI prefix, written at finish()

  // Ends one part: bfl writes it as its own file; comfyui collects it under its prefix;
  // gguf writes the transformer as GGUF Q8_0 and the rest as safetensors.
  void save(const std::string& path, const char* comfy_prefix) {
    const std::map<std::string, std::string> meta = {{"fluxpipe.test_model", "random weights; not FLUX.1, draws noise"}};
    if (layout == "comfyui") {
      for (auto& [n, t] : tensors) all_in_one.push_back({comfy_prefix + n, t});
    } else if (layout == "diffusers") {
      parts[comfy_prefix] = tensors;
    } else if (layout == "gguf" && quant) {   // the transformer, and T5 when asked: made quantized by put()
      std::string stem = path.substr(0, path.rfind('.'));
      std::string q = name(*quant);
      io::write_gguf(stem + "-" + q + ".gguf", tensors, {{"general.architecture", std::string(comfy_prefix) == "model.diffusion_model." ? "flux" : "t5encoder"},
                                                        {"fluxpipe.test_model", true}});
    } else {
      io::write_safetensors(path, tensors, meta);
    }
    tensors.clear();
  }
  void finish(const std::string& dir, const nlohmann::json& configs) {
    if (layout == "diffusers") {
      auto as_set = [](const io::NamedTensors& ts) {
        io::WeightSet w;
        for (const auto& [n, t] : ts) w.tensors.emplace(n, t);
        return w;
      };
      const std::map<std::string, std::string> meta = {{"fluxpipe.test_model", "random weights; not FLUX.1, draws noise"}};
      auto folder = [&](const std::string& sub, const io::NamedTensors& ts, const std::string& file, const nlohmann::json& cfg) {
        mkdir((dir + "/" + sub).c_str(), 0755);
        io::write_safetensors(dir + "/" + sub + "/" + file, ts, meta);
        std::ofstream(dir + "/" + sub + "/config.json") << cfg.dump(2) << "\n";
      };
      folder("transformer", io::flux_transformer_to_diffusers(as_set(parts["model.diffusion_model."])), "diffusion_pytorch_model.safetensors",
             configs["transformer"]);
      folder("vae", io::autoencoder_to_diffusers(as_set(parts["first_stage_model."])), "diffusion_pytorch_model.safetensors", configs["vae"]);
      folder("text_encoder", parts["text_encoders.clip_l.transformer."], "model.safetensors", configs["clip"]);
      folder("text_encoder_2", parts["text_encoders.t5xxl.transformer."], "model.safetensors", configs["t5"]);
      mkdir((dir + "/tokenizer").c_str(), 0755);
      for (const char* f : {"vocab.json", "merges.txt"}) {
        std::ifstream in(tokenizer::shipped_tokenizer_dir() + "/clip/" + f, std::ios::binary);
        if (!in) throw UserError("[make-test-model] cannot read the shipped CLIP tokenizer file " + std::string(f));
        std::ofstream(dir + "/tokenizer/" + f, std::ios::binary) << in.rdbuf();
      }
      std::ofstream(dir + "/model_index.json") << nlohmann::json{{"_class_name", "FluxPipeline"}, {"_fluxpipe_test_model", true}}.dump(2) << "\n";
    }
    if (layout == "comfyui") {
      io::write_safetensors(dir + "/flux1-test-comfyui-all-in-one.safetensors", all_in_one,
                            {{"fluxpipe.test_model", "random weights; not FLUX.1, draws noise"}});
    }
  }
};

constexpr int64_t CLIP_V = 49408, T5_V = 32128;   // the real tokenizers' vocabularies

struct Shapes {
  int64_t H, HD, MLP;                  // transformer
  int depth, single;
  int64_t ae_ch[4];
  int ae_enc_blocks, ae_dec_blocks;
  int64_t CLIP_H, clip_heads, clip_inter;
  int clip_layers;
  int64_t T5_D, t5_heads, t5_dkv, t5_ff;
  int t5_layers;
  std::vector<int> axes;
};

Shapes shapes_for(const TestModelOptions& o) {
  if (o.real_width) {
    return {3072, 128, 12288, o.depth, o.single, {128, 256, 512, 512}, 2, 3, 768, 12, 3072, o.text_layers,
            4096, 64, 64, 10240, o.text_layers, {16, 56, 56}};
  }
  return {32, 16, 128, o.depth, o.single, {32, 32, 64, 64}, 1, 2, 32, 2, 64, o.text_layers, 32, 2, 16, 64, o.text_layers, {4, 6, 6}};
}

}  // namespace

void write_test_model(const std::string& dir, const TestModelOptions& opt) {
  mkdir(dir.c_str(), 0755);
  const Shapes sh = shapes_for(opt);
  const int64_t H = sh.H, HD = sh.HD, MLP = sh.MLP, CTX = sh.T5_D, VEC = sh.CLIP_H, CLIP_H = sh.CLIP_H, T5_D = sh.T5_D;
  Writer w{opt.seed * 0x9E3779B97F4A7C15ULL + 1, {}, opt.real_width ? DType::BF16 : DType::F32, std::nullopt, opt.layout, {}, {}};
  auto quant_type = [](const std::string& t) {
    std::optional<DType> d = quant_type_from_name(t);
    if (!d) throw UserError("[make-test-model] unknown block type '" + t + "' (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k)");
    return d;
  };
  if (opt.layout == "gguf") w.quant = quant_type(opt.quant);   // the transformer
  if (opt.layout != "bfl" && opt.layout != "comfyui" && opt.layout != "gguf" && opt.layout != "diffusers") {
    throw UserError("[make-test-model] unknown layout '" + opt.layout + "' (bfl, diffusers, comfyui, gguf)");
  }

  // Transformer, BFL names: 1 double + 1 single block.
  w.linear("img_in", H, 64);
  w.linear("txt_in", H, CTX);
  w.linear("time_in.in_layer", H, 256);
  w.linear("time_in.out_layer", H, H);
  w.linear("vector_in.in_layer", H, VEC);
  w.linear("vector_in.out_layer", H, H);
  for (int d = 0; d < sh.depth; ++d)
  for (const char* s : {"img", "txt"}) {
    std::string p = "double_blocks." + std::to_string(d) + "." + s;
    w.linear(p + "_mod.lin", 6 * H, H);
    w.linear(p + "_attn.qkv", 3 * H, H);
    w.put(p + "_attn.norm.query_norm.scale", {HD}, 0.1f, 1.0f);
    w.put(p + "_attn.norm.key_norm.scale", {HD}, 0.1f, 1.0f);
    w.linear(p + "_attn.proj", H, H);
    w.linear(p + "_mlp.0", MLP, H);
    w.linear(p + "_mlp.2", H, MLP);
  }
  for (int i = 0; i < sh.single; ++i) {
    std::string p = "single_blocks." + std::to_string(i) + ".";
    w.linear(p + "linear1", 3 * H + MLP, H);
    w.linear(p + "linear2", H, H + MLP);
    w.put(p + "norm.query_norm.scale", {HD}, 0.1f, 1.0f);
    w.put(p + "norm.key_norm.scale", {HD}, 0.1f, 1.0f);
    w.linear(p + "modulation.lin", 3 * H, H);
  }
  w.linear("final_layer.linear", 64, H);
  w.linear("final_layer.adaLN_modulation.1", 2 * H, H);
  w.save(dir + "/flux1-test.safetensors", "model.diffusion_model.");
  w.quant = std::nullopt;

  // Autoencoder, BFL names: four levels, three 2x steps (8 pixels per latent pixel).
  const int64_t* ch = sh.ae_ch;
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
    for (int j = 0; j < sh.ae_enc_blocks; ++j) {
      resnet("encoder.down." + std::to_string(l) + ".block." + std::to_string(j), in, ch[l]);
      in = ch[l];
    }
    if (l != 3) w.conv("encoder.down." + std::to_string(l) + ".downsample.conv", in, in, 3);
  }
  mid("encoder.", in);
  w.norm("encoder.norm_out", in);
  w.conv("encoder.conv_out", 32, in, 3);
  w.conv("decoder.conv_in", ch[3], 16, 3);
  mid("decoder.", ch[3]);
  in = ch[3];
  for (int l = 3; l >= 0; --l) {
    for (int j = 0; j < sh.ae_dec_blocks; ++j) {
      resnet("decoder.up." + std::to_string(l) + ".block." + std::to_string(j), in, ch[l]);
      in = ch[l];
    }
    if (l != 0) w.conv("decoder.up." + std::to_string(l) + ".upsample.conv", in, in, 3);
  }
  w.norm("decoder.norm_out", in);
  w.conv("decoder.conv_out", 3, in, 3);
  w.save(dir + "/ae.safetensors", "first_stage_model.");

  // CLIP text tower, HF names, the real vocabulary and 77 positions.
  w.put("text_model.embeddings.token_embedding.weight", {CLIP_V, CLIP_H}, 0.5f);
  w.put("text_model.embeddings.position_embedding.weight", {77, CLIP_H}, 0.2f);
  for (int i = 0; i < sh.clip_layers; ++i) {
    std::string l = "text_model.encoder.layers." + std::to_string(i) + ".";
    for (const char* p : {"q_proj", "k_proj", "v_proj", "out_proj"}) w.linear(l + "self_attn." + p, CLIP_H, CLIP_H);
    w.norm(l + "layer_norm1", CLIP_H);
    w.norm(l + "layer_norm2", CLIP_H);
    w.linear(l + "mlp.fc1", sh.clip_inter, CLIP_H);
    w.linear(l + "mlp.fc2", CLIP_H, sh.clip_inter);
  }
  w.norm("text_model.final_layer_norm", CLIP_H);
  w.save(dir + "/clip_l.safetensors", "text_encoders.clip_l.transformer.");

  // T5 encoder, HF names, the real vocabulary.
  if (opt.layout == "gguf" && !opt.text_quant.empty()) w.quant = quant_type(opt.text_quant);
  w.put("shared.weight", {T5_V, T5_D}, 1.0f);
  const int64_t inner = sh.t5_heads * sh.t5_dkv;
  for (int i = 0; i < sh.t5_layers; ++i) {
    std::string b = "encoder.block." + std::to_string(i) + ".layer.";
    for (const char* p : {"q", "k", "v"}) w.linear(b + "0.SelfAttention." + p, inner, T5_D, false);
    w.linear(b + "0.SelfAttention.o", T5_D, inner, false);
    if (i == 0) {
      DType keep = w.matrix_dtype;
      w.matrix_dtype = DType::F32;
      w.put(b + "0.SelfAttention.relative_attention_bias.weight", {32, sh.t5_heads}, 0.5f);
      w.matrix_dtype = keep;
    }
    w.norm(b + "0.layer_norm", T5_D, false);
    w.linear(b + "1.DenseReluDense.wi_0", sh.t5_ff, T5_D, false);
    w.linear(b + "1.DenseReluDense.wi_1", sh.t5_ff, T5_D, false);
    w.linear(b + "1.DenseReluDense.wo", T5_D, sh.t5_ff, false);
    w.norm(b + "1.layer_norm", T5_D, false);
  }
  w.norm("encoder.final_layer_norm", T5_D, false);
  w.save(dir + "/t5xxl.safetensors", "text_encoders.t5xxl.transformer.");
  w.quant = std::nullopt;
  // The same sizes as diffusers' config.json files say them (diffusers layout).
  nlohmann::json diffusers_configs = {
      {"transformer", {{"_class_name", "FluxTransformer2DModel"}, {"axes_dims_rope", sh.axes}, {"num_attention_heads", H / HD},
                       {"attention_head_dim", HD}, {"in_channels", 64}, {"joint_attention_dim", CTX}, {"pooled_projection_dim", VEC},
                       {"num_layers", sh.depth}, {"num_single_layers", sh.single}, {"guidance_embeds", false}}},
      {"vae", {{"_class_name", "AutoencoderKL"}, {"latent_channels", 16}, {"scaling_factor", 0.3611}, {"shift_factor", 0.1159}}},
      {"clip", {{"architectures", {"CLIPTextModel"}}, {"hidden_size", CLIP_H}, {"num_attention_heads", sh.clip_heads},
                {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}, {"num_hidden_layers", sh.clip_layers}}},
      {"t5", {{"architectures", {"T5EncoderModel"}}, {"d_model", T5_D}, {"num_heads", sh.t5_heads}, {"layer_norm_epsilon", 1e-6},
              {"relative_attention_max_distance", 128}, {"feed_forward_proj", "gated-gelu"}}}};
  w.finish(dir, diffusers_configs);

  nlohmann::json config = {
      {"name", "fluxpipe-test-model"},
      {"test_model", true},
      {"note", "random weights at toy widths with FLUX.1's architecture; not a model: it draws noise"},
      {"width", opt.real_width ? "real" : "tiny"},
      {"layout", opt.layout},
      {"transformer", {{"axes_dim", sh.axes}, {"theta", 10000}, {"num_heads", H / HD}}},
      {"ae", {{"scale_factor", 0.3611}, {"shift_factor", 0.1159}}},
      {"clip", {{"num_attention_heads", sh.clip_heads}, {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}}},
      {"t5", {{"num_heads", sh.t5_heads}, {"layer_norm_epsilon", 1e-6}, {"relative_attention_max_distance", 128}, {"feed_forward_proj", "gated-gelu"}}}};
  if (opt.layout == "diffusers") {
    for (const char* k : {"transformer", "ae", "clip", "t5"}) config.erase(k);
  }
  std::ofstream(dir + "/fluxpipe.json") << config.dump(2) << "\n";
}

}  // namespace fluxpipe
