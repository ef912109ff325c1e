#include "pipeline/model_files.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/name_maps.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe {
namespace {

namespace fs = std::filesystem;

enum class Part { transformer, ae, clip, t5, unknown };

bool has_prefix(const io::WeightSet& w, const std::string& p) {
  auto it = w.tensors.lower_bound(p);
  return it != w.tensors.end() && it->first.rfind(p, 0) == 0;
}

Part classify(const io::WeightSet& w) {
  if (w.has("img_in.weight") || w.has("x_embedder.weight") || w.has("model.diffusion_model.img_in.weight")) return Part::transformer;
  if (w.has("decoder.conv_in.weight") || has_prefix(w, "first_stage_model.decoder.")) return Part::ae;
  if (w.has("text_model.embeddings.token_embedding.weight") || has_prefix(w, "cond_stage_model.transformer.text_model.")) return Part::clip;
  if (w.has("shared.weight") || w.has("encoder.block.0.layer.0.SelfAttention.q.weight") || w.has("token_embd.weight")) return Part::t5;
  return Part::unknown;
}

std::optional<nlohmann::json> read_json_file(const fs::path& p) {
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream in(p);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw UserError("[model] '" + p.string() + "' is not a JSON object");
  return j;
}

// diffusers' FluxTransformer2DModel config -> the BFL FluxParams keys our config reads.
nlohmann::json flux_params_from_diffusers(const nlohmann::json& d) {
  nlohmann::json p;
  if (d.contains("axes_dims_rope")) p["axes_dim"] = d["axes_dims_rope"];
  if (d.contains("num_attention_heads")) p["num_heads"] = d["num_attention_heads"];
  p["theta"] = 10000;
  return p;
}

// diffusers' AutoencoderKL config -> BFL's scale/shift keys.
nlohmann::json ae_params_from_diffusers(const nlohmann::json& d) {
  nlohmann::json p;
  if (d.contains("scaling_factor")) p["scale_factor"] = d["scaling_factor"];
  if (d.contains("shift_factor") && !d["shift_factor"].is_null()) p["shift_factor"] = d["shift_factor"];
  return p;
}

void assign(ModelFiles& m, Part part, io::WeightSet w, const std::string& where) {
  io::WeightSet* slot = part == Part::transformer ? &m.transformer : part == Part::ae ? &m.ae : part == Part::clip ? &m.clip : &m.t5;
  if (!slot->tensors.empty()) throw UserError("[model] two candidates for the same part; the second is '" + where + "'");
  *slot = std::move(w);
}

}  // namespace

ModelFiles find_model_files(const std::string& path) {
  ModelFiles m;
  fs::path root(path);
  if (!fs::exists(root)) throw UserError("[model] '" + path + "' does not exist");
  m.name = root.filename().string();
  std::vector<fs::path> candidates;   // weight files or sharded folders
  if (fs::is_directory(root) && fs::exists(root / "model_index.json")) {
    for (const char* sub : {"transformer", "vae", "text_encoder", "text_encoder_2"}) {
      if (fs::exists(root / sub)) candidates.push_back(root / sub);
    }
    if (auto c = read_json_file(root / "transformer/config.json")) m.transformer_params = flux_params_from_diffusers(*c);
    if (auto c = read_json_file(root / "vae/config.json")) m.ae_params = ae_params_from_diffusers(*c);
    m.clip_config = read_json_file(root / "text_encoder/config.json");
    m.t5_config = read_json_file(root / "text_encoder_2/config.json");
    if (fs::exists(root / "tokenizer/vocab.json")) m.clip_tokenizer_dir = (root / "tokenizer").string();
  } else if (fs::is_directory(root)) {
    // Single files, and sub-folders of safetensors (one part, perhaps sharded: BFL's repository
    // keeps CLIP-L in text_encoder/ and T5 in text_encoder_2/ beside flux1-schnell.safetensors).
    for (const auto& e : fs::directory_iterator(root)) {
      std::string ext = e.path().extension().string();
      if (e.is_regular_file() && (ext == ".safetensors" || ext == ".gguf" || ext == ".sft")) candidates.push_back(e.path());
      if (e.is_directory()) {
        for (const auto& f : fs::directory_iterator(e.path())) {
          if (f.is_regular_file() && f.path().extension() == ".safetensors") {
            candidates.push_back(e.path());
            break;
          }
        }
      }
    }
    std::sort(candidates.begin(), candidates.end());
    m.clip_config = read_json_file(root / "text_encoder/config.json");
    m.t5_config = read_json_file(root / "text_encoder_2/config.json");
    if (fs::exists(root / "tokenizer/vocab.json")) m.clip_tokenizer_dir = (root / "tokenizer").string();
  } else {
    candidates.push_back(root);
  }
  if (auto j = read_json_file(fs::is_directory(root) ? root / "fluxpipe.json" : root.parent_path() / "fluxpipe.json")) {
    if (j->contains("transformer")) m.transformer_params = (*j)["transformer"];
    if (j->contains("ae")) m.ae_params = (*j)["ae"];
    if (j->contains("clip")) m.clip_config = (*j)["clip"];
    if (j->contains("t5")) m.t5_config = (*j)["t5"];
    m.test_model = j->value("test_model", false);
    if (j->contains("name")) m.name = (*j)["name"].get<std::string>();
  }
  for (const fs::path& p : candidates) {
    io::WeightSet w = io::load_weights(p.string());
    // A ComfyUI "all in one" checkpoint holds several parts under prefixes.
    bool multi = has_prefix(w, "model.diffusion_model.") &&
                 (has_prefix(w, "first_stage_model.") || has_prefix(w, "text_encoders.") || has_prefix(w, "cond_stage_model."));
    if (multi) {
      assign(m, Part::transformer, io::flux_transformer_weights(io::with_prefix(w, "model.diffusion_model.")), p.string());
      if (has_prefix(w, "first_stage_model.")) assign(m, Part::ae, io::with_prefix(w, "first_stage_model."), p.string());
      if (has_prefix(w, "text_encoders.clip_l.transformer.")) {
        assign(m, Part::clip, io::with_prefix(w, "text_encoders.clip_l.transformer."), p.string());
      }
      if (has_prefix(w, "text_encoders.t5xxl.transformer.")) {
        assign(m, Part::t5, io::with_prefix(w, "text_encoders.t5xxl.transformer."), p.string());
      }
      continue;
    }
    switch (classify(w)) {
      case Part::transformer: assign(m, Part::transformer, io::flux_transformer_weights(w), p.string()); break;
      case Part::ae: assign(m, Part::ae, io::autoencoder_weights(w), p.string()); break;
      case Part::clip: assign(m, Part::clip, io::text_encoder_weights(w), p.string()); break;
      case Part::t5: assign(m, Part::t5, io::text_encoder_weights(w), p.string()); break;
      case Part::unknown: break;   // other files (LoRAs, previews) are not ours to judge
    }
  }
  std::string missing;
  if (m.transformer.tensors.empty()) missing += "\n  - the FLUX transformer (flux1-schnell.safetensors, a diffusers transformer/ folder or a GGUF file)";
  if (m.ae.tensors.empty()) missing += "\n  - the autoencoder (ae.safetensors or a diffusers vae/ folder)";
  if (m.clip.tensors.empty()) missing += "\n  - the CLIP-L text encoder (clip_l.safetensors or text_encoder/)";
  if (m.t5.tensors.empty()) missing += "\n  - the T5-XXL text encoder (t5xxl_*.safetensors, a T5 GGUF or text_encoder_2/)";
  if (!missing.empty()) throw UserError("[model] '" + path + "' lacks:" + missing);
  std::string shipped = tokenizer::shipped_tokenizer_dir();
  if (m.clip_tokenizer_dir.empty()) m.clip_tokenizer_dir = shipped + "/clip";
  m.t5_tokenizer_file = fs::is_directory(root) && fs::exists(root / "tokenizer_2/spiece.model")
                            ? (root / "tokenizer_2/spiece.model").string()
                            : shipped + "/t5-v1_1-xxl/spiece.model";
  return m;
}

}  // namespace fluxpipe
