// Checkpoint layouts: the tiny reference models rewritten the way each kind of file users
// download stores them (a sharded diffusers folder with split q/k/v and swapped final
// modulation halves, a ComfyUI single file, GGUF), loaded back through the name maps, must
// compute exactly what the BFL-named original computes.
#include <gtest/gtest.h>

#include <fstream>

#include "golden.h"
#include "io/name_maps.h"
#include "models/flux/flux.h"
#include "models/text/encoders.h"
#include "models/vae/vae.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

// Rows [r0, r0 + n) of a 1-D or 2-D tensor, as a new tensor.
Tensor rows(const Tensor& t, int64_t r0, int64_t n) {
  Shape s = t.shape();
  s[0] = n;
  Tensor out = Tensor::zeros(s, t.dtype());
  size_t row_bytes = t.nbytes() / static_cast<size_t>(t.size(0));
  std::memcpy(out.data<uint8_t>(), t.data<uint8_t>() + static_cast<size_t>(r0) * row_bytes, static_cast<size_t>(n) * row_bytes);
  return out;
}

// BFL names -> diffusers names, written independently of the loader's table: the inverse
// operations (splitting, swapping back).
io::NamedTensors to_diffusers(const io::WeightSet& w, int depth, int singles, int64_t H) {
  io::NamedTensors out;
  auto same = [&](const std::string& to, const std::string& from) {
    for (const char* s : {".weight", ".bias"})
      if (w.has(from + s)) out.push_back({to + s, w.at(from + s)});
  };
  same("x_embedder", "img_in");
  same("context_embedder", "txt_in");
  same("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer");
  same("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer");
  same("time_text_embed.text_embedder.linear_1", "vector_in.in_layer");
  same("time_text_embed.text_embedder.linear_2", "vector_in.out_layer");
  same("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer");
  same("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer");
  for (int i = 0; i < depth; ++i) {
    std::string d = "transformer_blocks." + std::to_string(i), b = "double_blocks." + std::to_string(i);
    same(d + ".norm1.linear", b + ".img_mod.lin");
    same(d + ".norm1_context.linear", b + ".txt_mod.lin");
    for (const char* s : {".weight", ".bias"}) {
      const Tensor& iq = w.at(b + ".img_attn.qkv" + s);
      const Tensor& tq = w.at(b + ".txt_attn.qkv" + s);
      const char* img_names[] = {".attn.to_q", ".attn.to_k", ".attn.to_v"};
      const char* txt_names[] = {".attn.add_q_proj", ".attn.add_k_proj", ".attn.add_v_proj"};
      for (int k = 0; k < 3; ++k) {
        out.push_back({d + img_names[k] + s, rows(iq, k * H, H)});
        out.push_back({d + txt_names[k] + s, rows(tq, k * H, H)});
      }
    }
    out.push_back({d + ".attn.norm_q.weight", w.at(b + ".img_attn.norm.query_norm.scale")});
    out.push_back({d + ".attn.norm_k.weight", w.at(b + ".img_attn.norm.key_norm.scale")});
    out.push_back({d + ".attn.norm_added_q.weight", w.at(b + ".txt_attn.norm.query_norm.scale")});
    out.push_back({d + ".attn.norm_added_k.weight", w.at(b + ".txt_attn.norm.key_norm.scale")});
    same(d + ".attn.to_out.0", b + ".img_attn.proj");
    same(d + ".attn.to_add_out", b + ".txt_attn.proj");
    same(d + ".ff.net.0.proj", b + ".img_mlp.0");
    same(d + ".ff.net.2", b + ".img_mlp.2");
    same(d + ".ff_context.net.0.proj", b + ".txt_mlp.0");
    same(d + ".ff_context.net.2", b + ".txt_mlp.2");
  }
  for (int i = 0; i < singles; ++i) {
    std::string d = "single_transformer_blocks." + std::to_string(i), b = "single_blocks." + std::to_string(i);
    for (const char* s : {".weight", ".bias"}) {
      const Tensor& l1 = w.at(b + ".linear1" + s);
      out.push_back({d + ".attn.to_q" + s, rows(l1, 0, H)});
      out.push_back({d + ".attn.to_k" + s, rows(l1, H, H)});
      out.push_back({d + ".attn.to_v" + s, rows(l1, 2 * H, H)});
      out.push_back({d + ".proj_mlp" + s, rows(l1, 3 * H, l1.size(0) - 3 * H)});
    }
    same(d + ".proj_out", b + ".linear2");
    same(d + ".norm.linear", b + ".modulation.lin");
    out.push_back({d + ".attn.norm_q.weight", w.at(b + ".norm.query_norm.scale")});
    out.push_back({d + ".attn.norm_k.weight", w.at(b + ".norm.key_norm.scale")});
  }
  same("proj_out", "final_layer.linear");
  for (const char* s : {".weight", ".bias"}) {   // diffusers keeps (scale, shift)
    const Tensor& m = w.at(std::string("final_layer.adaLN_modulation.1") + s);
    Tensor swapped = Tensor::zeros(m.shape(), m.dtype());
    size_t hb = m.nbytes() / 2;
    std::memcpy(swapped.data<uint8_t>(), m.data<uint8_t>() + hb, hb);
    std::memcpy(swapped.data<uint8_t>() + hb, m.data<uint8_t>(), hb);
    out.push_back({std::string("norm_out.linear") + s, swapped});
  }
  return out;
}

Tensor forward(const io::WeightSet& w, const nlohmann::json& params, const io::WeightSet& g) {
  flux::Model model(flux::Config::from_weights(w, &params), w);
  Ctx c;
  Tensor guidance = g.has("guidance") ? g.at("guidance") : Tensor();
  return model.forward(c, g.at("img"), g.at("img_ids"), g.at("txt"), g.at("txt_ids"), g.at("timesteps"), g.at("y"),
                       guidance.defined() ? &guidance : nullptr);
}

TEST(Layouts, DiffusersShardedFolderComputesTheSame) {
  for (const char* variant : {"", "_dev"}) {
    std::string v = variant;
    io::WeightSet bfl = io::load_weights(testdata("flux-tiny/transformer" + v + ".safetensors"));
    io::WeightSet g = io::load_weights(testdata("flux-tiny/transformer" + v + "_io.safetensors"));
    nlohmann::json params = read_json(testdata("flux-tiny/transformer" + v + "_params.json"));
    io::NamedTensors named = to_diffusers(bfl, params["depth"], params["depth_single_blocks"], params["hidden_size"]);
    // Two shards and an index, as the published folder has.
    TempDir dir;
    io::NamedTensors a(named.begin(), named.begin() + static_cast<long>(named.size() / 2)), b(named.begin() + static_cast<long>(named.size() / 2), named.end());
    io::write_safetensors(dir.path() + "/diffusion_pytorch_model-00001-of-00002.safetensors", a);
    io::write_safetensors(dir.path() + "/diffusion_pytorch_model-00002-of-00002.safetensors", b);
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
    for (auto& [n, t] : a) index["weight_map"][n] = "diffusion_pytorch_model-00001-of-00002.safetensors";
    for (auto& [n, t] : b) index["weight_map"][n] = "diffusion_pytorch_model-00002-of-00002.safetensors";
    std::ofstream(dir.path() + "/diffusion_pytorch_model.safetensors.index.json") << index.dump();

    io::WeightSet loaded = io::load_weights(dir.path());
    EXPECT_EQ(io::detect_transformer_layout(loaded), io::Layout::diffusers);
    io::WeightSet mapped = io::flux_transformer_weights(loaded);
    EXPECT_EQ(mapped.tensors.size(), bfl.tensors.size());
    for (const auto& [n, t] : bfl.tensors) {
      ASSERT_TRUE(mapped.has(n)) << n;
      EXPECT_EQ(mapped.at(n).to_floats(), t.to_floats()) << n;
    }
    expect_matches(forward(mapped, params, g), g.at("output"), 1e-4, 1e-4, "diffusers" + v);
  }
}

TEST(Layouts, ComfyUiPrefixAndGgufComputeTheSame) {
  io::WeightSet bfl = io::load_weights(testdata("flux-tiny/transformer.safetensors"));
  io::WeightSet g = io::load_weights(testdata("flux-tiny/transformer_io.safetensors"));
  nlohmann::json params = read_json(testdata("flux-tiny/transformer_params.json"));
  TempDir dir;
  io::NamedTensors prefixed, plain;
  for (auto& [n, t] : bfl.tensors) {
    prefixed.push_back({"model.diffusion_model." + n, t});
    plain.push_back({n, t});
  }
  io::write_safetensors(dir.path() + "/comfy.safetensors", prefixed);
  io::WeightSet comfy = io::flux_transformer_weights(io::load_weights(dir.path() + "/comfy.safetensors"));
  expect_matches(forward(comfy, params, g), g.at("output"), 1e-4, 1e-4, "ComfyUI prefix");
  io::write_gguf(dir.path() + "/model.gguf", plain, {{"general.architecture", "flux"}});
  io::WeightSet gguf = io::flux_transformer_weights(io::load_weights(dir.path() + "/model.gguf"));
  expect_matches(forward(gguf, params, g), g.at("output"), 1e-4, 1e-4, "GGUF F32");
  // Quantized: Q8_0 matrices (the block size fits these widths), F32 vectors, as city96's files.
  io::NamedTensors q8;
  for (auto& [n, t] : bfl.tensors) {
    if (t.dim() == 2 && t.size(1) % 32 == 0) {
      Tensor q = Tensor::zeros(t.shape(), DType::Q8_0);
      std::vector<float> f = t.to_floats();
      from_f32(DType::Q8_0, f.data(), q.data<uint8_t>(), t.numel());
      q8.push_back({n, q});
    } else {
      q8.push_back({n, t});
    }
  }
  io::write_gguf(dir.path() + "/q8.gguf", q8);
  io::WeightSet wq = io::flux_transformer_weights(io::load_weights(dir.path() + "/q8.gguf"));
  expect_matches(forward(wq, params, g), g.at("output"), 0.05, 0.05, "GGUF Q8_0 (quantization error)");
}

TEST(Layouts, DiffusersAutoencoderComputesTheSame) {
  io::WeightSet bfl = io::load_weights(testdata("flux-tiny/ae.safetensors"));
  io::WeightSet g = io::load_weights(testdata("flux-tiny/ae_io.safetensors"));
  nlohmann::json params = read_json(testdata("flux-tiny/ae_params.json"));
  // BFL -> diffusers names, by hand: decoder levels renumbered, shortcut and norm names, linear attention.
  io::NamedTensors named;
  int levels = 2;
  for (const auto& [n, t] : bfl.tensors) {
    std::string d = n;
    auto rep = [&](const std::string& a, const std::string& b) {
      if (size_t p = d.find(a); p != std::string::npos) d.replace(p, a.size(), b);
    };
    rep("nin_shortcut", "conv_shortcut");
    rep("norm_out", "conv_norm_out");
    rep("mid.block_1", "mid_block.resnets.0");
    rep("mid.block_2", "mid_block.resnets.1");
    rep("mid.attn_1.norm", "mid_block.attentions.0.group_norm");
    rep("mid.attn_1.q.", "mid_block.attentions.0.to_q.");
    rep("mid.attn_1.k.", "mid_block.attentions.0.to_k.");
    rep("mid.attn_1.v.", "mid_block.attentions.0.to_v.");
    rep("mid.attn_1.proj_out", "mid_block.attentions.0.to_out.0");
    rep("downsample.conv", "downsamplers.0.conv");
    rep("upsample.conv", "upsamplers.0.conv");
    rep(".block.", ".resnets.");
    for (int l = 0; l < levels; ++l) {
      rep("encoder.down." + std::to_string(l) + ".", "encoder.down_blocks." + std::to_string(l) + ".");
      rep("decoder.up." + std::to_string(l) + ".", "decoder.up_blocks." + std::to_string(levels - 1 - l) + ".");
    }
    Tensor v = t;
    if (d.find("attentions.0.to_") != std::string::npos && t.dim() == 4) v = t.reshape({t.size(0), t.size(1)});
    named.push_back({d, v});
  }
  TempDir dir;
  io::write_safetensors(dir.path() + "/diffusion_pytorch_model.safetensors", named);
  io::WeightSet mapped = io::autoencoder_weights(io::load_weights(dir.path()));
  EXPECT_EQ(mapped.tensors.size(), bfl.tensors.size());
  vae::Model ae(vae::Config::from_weights(mapped, &params), mapped);
  Ctx c;
  expect_matches(ae.decode(c, g.at("decode.z")), g.at("decode.out"), 1e-4, 1e-4, "diffusers vae decode");
  expect_matches(ae.encode(c, g.at("encode.x")), g.at("encode.out"), 1e-4, 1e-4, "diffusers vae encode");
}

TEST(Layouts, GgufT5InLlamaCppNamesComputesTheSame) {
  io::WeightSet hf = io::load_weights(testdata("text-tiny/t5.safetensors"));
  io::WeightSet g = io::load_weights(testdata("text-tiny/t5_io.safetensors"));
  nlohmann::json cfg = read_json(testdata("text-tiny/t5_config.json"));
  // HF names -> llama.cpp names, written by hand.
  io::NamedTensors named;
  for (const auto& [n, t] : hf.tensors) {
    std::string d = n;
    if (d == "shared.weight") d = "token_embd.weight";
    else if (d == "encoder.final_layer_norm.weight") d = "enc.output_norm.weight";
    else {
      std::string idx = d.substr(14, d.find('.', 14) - 14);
      for (auto [from, to] : {std::pair{"layer.0.SelfAttention.q.weight", "attn_q.weight"},
                              {"layer.0.SelfAttention.k.weight", "attn_k.weight"},
                              {"layer.0.SelfAttention.v.weight", "attn_v.weight"},
                              {"layer.0.SelfAttention.o.weight", "attn_o.weight"},
                              {"layer.0.SelfAttention.relative_attention_bias.weight", "attn_rel_b.weight"},
                              {"layer.0.layer_norm.weight", "attn_norm.weight"},
                              {"layer.1.DenseReluDense.wi_0.weight", "ffn_gate.weight"},
                              {"layer.1.DenseReluDense.wi_1.weight", "ffn_up.weight"},
                              {"layer.1.DenseReluDense.wo.weight", "ffn_down.weight"},
                              {"layer.1.layer_norm.weight", "ffn_norm.weight"}}) {
        if (d.size() > std::string(from).size() && d.substr(d.size() - std::string(from).size()) == from) d = "enc.blk." + idx + "." + to;
      }
    }
    named.push_back({d, t});
  }
  TempDir dir;
  io::write_gguf(dir.path() + "/t5.gguf", named, {{"general.architecture", "t5encoder"}});
  io::WeightSet mapped = io::text_encoder_weights(io::load_weights(dir.path() + "/t5.gguf"));
  EXPECT_EQ(mapped.tensors.size(), hf.tensors.size());
  text::T5Encoder t5(text::T5Config::from_weights(mapped, &cfg), mapped);
  Ctx c;
  expect_matches(t5.forward(c, g.at("input_ids")), g.at("last_hidden_state_unmasked"), 5e-5, 0, "GGUF T5 (llama.cpp names)");
}

TEST(Layouts, TheRealDiffusersNamesAllMap) {
  // Every tensor name of the published FLUX.1-schnell transformer maps onto a BFL name the model
  // reads: build a WeightSet of tiny stand-ins under exactly those names and map it.
  nlohmann::json index = read_json(testdata("flux1-schnell-layout/transformer/diffusion_pytorch_model.safetensors.index.json"));
  io::WeightSet fake;
  for (auto& [name, shard] : index["weight_map"].items()) {
    bool vector = name.find("norm_q") != std::string::npos || name.find("norm_k") != std::string::npos ||
                  name.find("norm_added") != std::string::npos || (name.size() > 5 && name.substr(name.size() - 5) == ".bias");
    fake.tensors.emplace(name, vector ? Tensor::zeros({2}, DType::BF16) : Tensor::zeros({2, 4}, DType::BF16));
  }
  io::WeightSet mapped = io::flux_transformer_weights(fake);
  EXPECT_TRUE(mapped.has("double_blocks.18.txt_attn.qkv.weight"));
  EXPECT_TRUE(mapped.has("single_blocks.37.linear1.weight"));
  EXPECT_EQ(mapped.at("single_blocks.37.linear1.weight").size(0), 8);   // q, k, v, mlp stacked
  EXPECT_FALSE(mapped.has("guidance_in.in_layer.weight"));              // schnell has none
  EXPECT_EQ(index["weight_map"].size(), 1156u);
  // BFL's schnell has 12 embedder tensors, 24 per double block, 8 per single block, 4 final.
  EXPECT_EQ(mapped.tensors.size(), 12u + 19 * 24 + 38 * 8 + 4);
}

}  // namespace
}  // namespace fluxpipe::testing
