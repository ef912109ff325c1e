#include "io/name_maps.h"

#include <cstring>
#include <functional>
#include <vector>

#include "core/error.h"

namespace fluxpipe::io {
namespace {

// One BFL tensor made from one or more source tensors stacked along dim 0 (rows, in order).
// "{i}" stands for a block index, "{w}" for "weight" and "bias" alike.
struct Rule {
  const char* target;
  std::vector<const char*> sources;
  bool swap_halves = false;   // exchange the two halves of dim 0
};

const std::vector<Rule>& diffusers_transformer_rules() {
  static const std::vector<Rule> rules = {
      {"img_in.{w}", {"x_embedder.{w}"}},
      {"txt_in.{w}", {"context_embedder.{w}"}},
      {"time_in.in_layer.{w}", {"time_text_embed.timestep_embedder.linear_1.{w}"}},
      {"time_in.out_layer.{w}", {"time_text_embed.timestep_embedder.linear_2.{w}"}},
      {"vector_in.in_layer.{w}", {"time_text_embed.text_embedder.linear_1.{w}"}},
      {"vector_in.out_layer.{w}", {"time_text_embed.text_embedder.linear_2.{w}"}},
      {"guidance_in.in_layer.{w}", {"time_text_embed.guidance_embedder.linear_1.{w}"}},
      {"guidance_in.out_layer.{w}", {"time_text_embed.guidance_embedder.linear_2.{w}"}},
      {"double_blocks.{i}.img_mod.lin.{w}", {"transformer_blocks.{i}.norm1.linear.{w}"}},
      {"double_blocks.{i}.txt_mod.lin.{w}", {"transformer_blocks.{i}.norm1_context.linear.{w}"}},
      {"double_blocks.{i}.img_attn.qkv.{w}",
       {"transformer_blocks.{i}.attn.to_q.{w}", "transformer_blocks.{i}.attn.to_k.{w}", "transformer_blocks.{i}.attn.to_v.{w}"}},
      {"double_blocks.{i}.txt_attn.qkv.{w}",
       {"transformer_blocks.{i}.attn.add_q_proj.{w}", "transformer_blocks.{i}.attn.add_k_proj.{w}",
        "transformer_blocks.{i}.attn.add_v_proj.{w}"}},
      {"double_blocks.{i}.img_attn.norm.query_norm.scale", {"transformer_blocks.{i}.attn.norm_q.weight"}},
      {"double_blocks.{i}.img_attn.norm.key_norm.scale", {"transformer_blocks.{i}.attn.norm_k.weight"}},
      {"double_blocks.{i}.txt_attn.norm.query_norm.scale", {"transformer_blocks.{i}.attn.norm_added_q.weight"}},
      {"double_blocks.{i}.txt_attn.norm.key_norm.scale", {"transformer_blocks.{i}.attn.norm_added_k.weight"}},
      {"double_blocks.{i}.img_attn.proj.{w}", {"transformer_blocks.{i}.attn.to_out.0.{w}"}},
      {"double_blocks.{i}.txt_attn.proj.{w}", {"transformer_blocks.{i}.attn.to_add_out.{w}"}},
      {"double_blocks.{i}.img_mlp.0.{w}", {"transformer_blocks.{i}.ff.net.0.proj.{w}"}},
      {"double_blocks.{i}.img_mlp.2.{w}", {"transformer_blocks.{i}.ff.net.2.{w}"}},
      {"double_blocks.{i}.txt_mlp.0.{w}", {"transformer_blocks.{i}.ff_context.net.0.proj.{w}"}},
      {"double_blocks.{i}.txt_mlp.2.{w}", {"transformer_blocks.{i}.ff_context.net.2.{w}"}},
      {"single_blocks.{i}.linear1.{w}",
       {"single_transformer_blocks.{i}.attn.to_q.{w}", "single_transformer_blocks.{i}.attn.to_k.{w}",
        "single_transformer_blocks.{i}.attn.to_v.{w}", "single_transformer_blocks.{i}.proj_mlp.{w}"}},
      {"single_blocks.{i}.linear2.{w}", {"single_transformer_blocks.{i}.proj_out.{w}"}},
      {"single_blocks.{i}.norm.query_norm.scale", {"single_transformer_blocks.{i}.attn.norm_q.weight"}},
      {"single_blocks.{i}.norm.key_norm.scale", {"single_transformer_blocks.{i}.attn.norm_k.weight"}},
      {"single_blocks.{i}.modulation.lin.{w}", {"single_transformer_blocks.{i}.norm.linear.{w}"}},
      {"final_layer.linear.{w}", {"proj_out.{w}"}},
      {"final_layer.adaLN_modulation.1.{w}", {"norm_out.linear.{w}"}, true},
  };
  return rules;
}

std::string substitute(std::string s, const std::string& key, const std::string& value) {
  for (size_t p; (p = s.find(key)) != std::string::npos;) s.replace(p, key.size(), value);
  return s;
}

// Rows of `parts` stacked (dim 0), optionally with the halves exchanged: new CPU memory.
Tensor stack_rows(const std::vector<Tensor>& parts, bool swap_halves, const std::string& target) {
  Shape shape = parts[0].shape();
  int64_t rows = 0;
  for (const Tensor& p : parts) {
    Shape s = p.shape();
    if (p.dtype() != parts[0].dtype() || s.size() != shape.size() || !std::equal(s.begin() + 1, s.end(), shape.begin() + 1)) {
      throw UserError("[weights] cannot stack the parts of '" + target + "': " + parts[0].describe() + " and " + p.describe());
    }
    rows += s[0];
  }
  shape[0] = rows;
  if (parts.size() == 1 && !swap_halves) return parts[0];
  Tensor out = Tensor::zeros(shape, parts[0].dtype());
  uint8_t* dst = out.data<uint8_t>();
  for (const Tensor& p : parts) {
    std::memcpy(dst, p.data<uint8_t>(), p.nbytes());
    dst += p.nbytes();
  }
  if (swap_halves) {
    if (rows % 2) throw UserError("[weights] '" + target + "' has an odd number of rows to swap");
    size_t half = out.nbytes() / 2;
    std::vector<uint8_t> tmp(out.data<uint8_t>(), out.data<uint8_t>() + half);
    std::memmove(out.data<uint8_t>(), out.data<uint8_t>() + half, half);
    std::memcpy(out.data<uint8_t>() + half, tmp.data(), half);
  }
  return out;
}

WeightSet apply_rules(const WeightSet& src, const std::vector<Rule>& rules, const std::string& what) {
  WeightSet out;
  out.metadata = src.metadata;
  out.files = src.files;
  int doubles = src.count_numbered("transformer_blocks.", ".norm1.linear.weight");
  int singles = src.count_numbered("single_transformer_blocks.", ".norm.linear.weight");
  for (const Rule& r : rules) {
    std::string target = r.target;
    bool per_block = target.find("{i}") != std::string::npos;
    int blocks = !per_block ? 1 : target.rfind("double_blocks", 0) == 0 ? doubles : singles;
    for (int i = 0; i < blocks; ++i) {
      for (const char* w : {"weight", "bias"}) {
        bool has_w = target.find("{w}") != std::string::npos;
        if (!has_w && std::string(w) == "bias") continue;
        auto expand = [&](const std::string& s) { return substitute(substitute(s, "{i}", std::to_string(i)), "{w}", w); };
        std::vector<Tensor> parts;
        std::string missing;
        for (const char* s : r.sources) {
          std::string name = expand(s);
          if (src.has(name)) parts.push_back(src.at(name));
          else if (missing.empty()) missing = name;
        }
        if (parts.empty()) continue;   // optional tensors (biases, guidance) simply absent
        if (!missing.empty()) {
          throw UserError("[weights] " + what + ": '" + missing + "' is missing (needed for '" + expand(target) + "')");
        }
        out.tensors.emplace(expand(target), stack_rows(parts, r.swap_halves, expand(target)));
      }
    }
  }
  return out;
}

WeightSet strip_prefix(const WeightSet& src, const std::string& prefix) {
  WeightSet out;
  out.metadata = src.metadata;
  out.files = src.files;
  for (const auto& [name, t] : src.tensors) {
    if (name.rfind(prefix, 0) == 0) out.tensors.emplace(name.substr(prefix.size()), t);
  }
  return out;
}

bool any_prefix(const WeightSet& w, const std::string& prefix) {
  auto it = w.tensors.lower_bound(prefix);
  return it != w.tensors.end() && it->first.rfind(prefix, 0) == 0;
}

}  // namespace

WeightSet text_encoder_weights(const WeightSet& src) {
  for (const char* prefix : {"cond_stage_model.transformer.", "text_encoders.clip_l.transformer.",
                             "text_encoders.t5xxl.transformer."}) {
    if (any_prefix(src, prefix)) return strip_prefix(src, prefix);
  }
  if (!src.has("token_embd.weight")) return src;
  // llama.cpp's T5 names (GGUF encoders), as data: suffix after "enc.blk.N." -> HF suffix.
  static const std::pair<const char*, const char*> block[] = {
      {"attn_q.weight", "layer.0.SelfAttention.q.weight"},
      {"attn_k.weight", "layer.0.SelfAttention.k.weight"},
      {"attn_v.weight", "layer.0.SelfAttention.v.weight"},
      {"attn_o.weight", "layer.0.SelfAttention.o.weight"},
      {"attn_rel_b.weight", "layer.0.SelfAttention.relative_attention_bias.weight"},
      {"attn_norm.weight", "layer.0.layer_norm.weight"},
      {"ffn_gate.weight", "layer.1.DenseReluDense.wi_0.weight"},
      {"ffn_up.weight", "layer.1.DenseReluDense.wi_1.weight"},
      {"ffn_down.weight", "layer.1.DenseReluDense.wo.weight"},
      {"ffn_norm.weight", "layer.1.layer_norm.weight"},
  };
  WeightSet out;
  out.metadata = src.metadata;
  out.files = src.files;
  for (const auto& [name, t] : src.tensors) {
    if (name == "token_embd.weight") {
      out.tensors.emplace("shared.weight", t);
    } else if (name == "enc.output_norm.weight") {
      out.tensors.emplace("encoder.final_layer_norm.weight", t);
    } else if (name.rfind("enc.blk.", 0) == 0) {
      size_t dot = name.find('.', 8);
      std::string index = name.substr(8, dot - 8), rest = name.substr(dot + 1);
      for (auto [from, to] : block) {
        if (rest == from) out.tensors.emplace("encoder.block." + index + "." + to, t);
      }
    }
  }
  return out;
}

WeightSet with_prefix(const WeightSet& src, const std::string& prefix) { return strip_prefix(src, prefix); }

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::bfl: return "BFL";
    case Layout::diffusers: return "diffusers";
    case Layout::comfyui: return "ComfyUI";
  }
  return "?";
}

Layout detect_transformer_layout(const WeightSet& src) {
  if (src.has("x_embedder.weight")) return Layout::diffusers;
  if (any_prefix(src, "model.diffusion_model.")) return Layout::comfyui;
  return Layout::bfl;
}

WeightSet flux_transformer_weights(const WeightSet& src) {
  switch (detect_transformer_layout(src)) {
    case Layout::diffusers: return apply_rules(src, diffusers_transformer_rules(), "diffusers transformer");
    case Layout::comfyui: return strip_prefix(src, "model.diffusion_model.");
    case Layout::bfl: return src;
  }
  return src;
}

namespace {

// (BFL module, diffusers module) pairs of an autoencoder, as data built from the level and block
// counts of `w` (in diffusers naming when `diffusers`, BFL naming otherwise). Each module has a
// ".weight" and usually a ".bias".
std::vector<std::pair<std::string, std::string>> ae_module_pairs(const WeightSet& w, bool diffusers) {
  std::vector<std::pair<std::string, std::string>> pairs;
  auto resnet = [&](const std::string& bfl, const std::string& dif) {
    for (const char* p : {"norm1", "conv1", "norm2", "conv2"}) pairs.push_back({bfl + "." + p, dif + "." + p});
    pairs.push_back({bfl + ".nin_shortcut", dif + ".conv_shortcut"});
  };
  for (const char* tower : {"encoder", "decoder"}) {
    std::string t = tower;
    if (!w.has(t + ".conv_in.weight")) continue;
    pairs.push_back({t + ".conv_in", t + ".conv_in"});
    pairs.push_back({t + ".conv_out", t + ".conv_out"});
    pairs.push_back({t + ".norm_out", t + ".conv_norm_out"});
    resnet(t + ".mid.block_1", t + ".mid_block.resnets.0");
    resnet(t + ".mid.block_2", t + ".mid_block.resnets.1");
    pairs.push_back({t + ".mid.attn_1.norm", t + ".mid_block.attentions.0.group_norm"});
    pairs.push_back({t + ".mid.attn_1.q", t + ".mid_block.attentions.0.to_q"});
    pairs.push_back({t + ".mid.attn_1.k", t + ".mid_block.attentions.0.to_k"});
    pairs.push_back({t + ".mid.attn_1.v", t + ".mid_block.attentions.0.to_v"});
    pairs.push_back({t + ".mid.attn_1.proj_out", t + ".mid_block.attentions.0.to_out.0"});
    const bool dec = t == "decoder";
    const std::string dif_levels = t + (dec ? ".up_blocks." : ".down_blocks."), bfl_levels = t + (dec ? ".up." : ".down.");
    int levels = diffusers ? w.count_numbered(dif_levels, ".resnets.0.conv1.weight") : w.count_numbered(bfl_levels, ".block.0.conv1.weight");
    for (int i = 0; i < levels; ++i) {
      int level = dec ? levels - 1 - i : i;   // diffusers' up_blocks.0 is BFL's decoder.up.<last>
      std::string dif = dif_levels + std::to_string(i), bfl = bfl_levels + std::to_string(level);
      int n = diffusers ? w.count_numbered(dif + ".resnets.", ".conv1.weight") : w.count_numbered(bfl + ".block.", ".conv1.weight");
      for (int j = 0; j < n; ++j) resnet(bfl + ".block." + std::to_string(j), dif + ".resnets." + std::to_string(j));
      pairs.push_back({bfl + (dec ? ".upsample.conv" : ".downsample.conv"), dif + (dec ? ".upsamplers.0.conv" : ".downsamplers.0.conv")});
    }
  }
  return pairs;
}

}  // namespace

WeightSet autoencoder_weights(const WeightSet& src) {
  if (any_prefix(src, "first_stage_model.")) return strip_prefix(src, "first_stage_model.");
  if (any_prefix(src, "vae.")) return strip_prefix(src, "vae.");
  if (!src.has("decoder.up_blocks.0.resnets.0.conv1.weight") && !src.has("decoder.mid_block.resnets.0.conv1.weight")) return src;
  WeightSet out;
  out.metadata = src.metadata;
  out.files = src.files;
  for (const auto& [bfl, dif] : ae_module_pairs(src, true)) {
    for (const char* w : {".weight", ".bias"}) {
      if (!src.has(dif + w)) continue;
      Tensor t = src.at(dif + w);
      // diffusers' attention projections are linear [C, C]; BFL's are 1x1 convolutions.
      if (std::string(w) == ".weight" && t.dim() == 2 && bfl.find("attn_1.") != std::string::npos) t = t.reshape({t.size(0), t.size(1), 1, 1});
      out.tensors.emplace(bfl + w, t);
    }
  }
  return out;
}

NamedTensors autoencoder_to_diffusers(const WeightSet& bfl) {
  NamedTensors out;
  for (const auto& [b, dif] : ae_module_pairs(bfl, false)) {
    for (const char* w : {".weight", ".bias"}) {
      if (!bfl.has(b + w)) continue;
      Tensor t = bfl.at(b + w);
      if (std::string(w) == ".weight" && t.dim() == 4 && b.find("attn_1.") != std::string::npos) t = t.reshape({t.size(0), t.size(1)});
      out.push_back({dif + w, t});
    }
  }
  return out;
}

NamedTensors flux_transformer_to_diffusers(const WeightSet& bfl) {
  NamedTensors out;
  const int64_t hidden = bfl.at("img_in.weight").size(0);
  int doubles = bfl.count_numbered("double_blocks.", ".img_mod.lin.weight");
  int singles = bfl.count_numbered("single_blocks.", ".linear1.weight");
  for (const Rule& r : diffusers_transformer_rules()) {
    std::string target = r.target;
    bool per_block = target.find("{i}") != std::string::npos;
    int blocks = !per_block ? 1 : target.rfind("double_blocks", 0) == 0 ? doubles : singles;
    for (int i = 0; i < blocks; ++i) {
      for (const char* w : {"weight", "bias"}) {
        if (target.find("{w}") == std::string::npos && std::string(w) == "bias") continue;
        auto expand = [&](const std::string& s) { return substitute(substitute(s, "{i}", std::to_string(i)), "{w}", w); };
        std::string name = expand(target);
        if (!bfl.has(name)) continue;
        const Tensor& t = bfl.at(name);
        // Rows per source: equal parts, except the single blocks' q, k, v (hidden rows each) and MLP (the rest).
        int64_t rows = t.size(0), n = static_cast<int64_t>(r.sources.size()), at = 0;
        size_t row_bytes = t.nbytes() / static_cast<size_t>(rows);
        for (int64_t k = 0; k < n; ++k) {
          int64_t part = n == 4 ? (k < 3 ? hidden : rows - 3 * hidden) : rows / n;
          Shape shape = t.shape();
          shape[0] = part;
          Tensor piece = Tensor::zeros(shape, t.dtype());
          const uint8_t* src = t.data<uint8_t>() + static_cast<size_t>(at) * row_bytes;
          size_t bytes = static_cast<size_t>(part) * row_bytes;
          if (r.swap_halves) {   // back to diffusers' (scale, shift)
            std::memcpy(piece.data<uint8_t>(), src + bytes / 2, bytes / 2);
            std::memcpy(piece.data<uint8_t>() + bytes / 2, src, bytes / 2);
          } else {
            std::memcpy(piece.data<uint8_t>(), src, bytes);
          }
          out.push_back({expand(r.sources[static_cast<size_t>(k)]), piece});
          at += part;
        }
      }
    }
  }
  return out;
}

}  // namespace fluxpipe::io
