#include "pipeline/pipeline.h"

#include <cctype>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/name_maps.h"
#include "tokenizer/tokenizers.h"
#include "io/weights.h"
#include "models/flux/flux.h"
#include "models/text/encoders.h"
#include "models/vae/vae.h"
#include "pipeline/device_select.h"
#include "pipeline/memory_plan.h"
#include "pipeline/noise.h"
#include "pipeline/sampler.h"

namespace fluxpipe {
namespace {

[[noreturn]] void fail(const std::string& why) { throw UserError("[run] " + why); }

std::optional<nlohmann::json> read_params(const std::string& path) {
  if (path.empty()) return std::nullopt;
  std::ifstream in(path);
  if (!in) fail("cannot open --config '" + path + "'");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("--config '" + path + "' is not a JSON object");
  return j;
}

}  // namespace

size_t peak_rss_bytes() { return peak_resident_bytes(); }

namespace {

// Any layout users have (BFL, diffusers folder, ComfyUI single file, GGUF) under BFL names.
io::WeightSet transformer_weights(const std::string& path) { return io::flux_transformer_weights(io::load_weights(path)); }
io::WeightSet ae_weights(const std::string& path) { return io::autoencoder_weights(io::load_weights(path)); }

const Tensor& input(const io::WeightSet& in, const std::string& name, const std::string& file) {
  if (!in.has(name)) fail("inputs '" + file + "' have no tensor '" + name + "'");
  return in.at(name);
}

// Inputs may be stored in any float dtype; the models take F32.
Tensor as_f32(Ctx& c, const Tensor& t) { return t.dtype() == DType::F32 && t.is_contiguous() ? t : ops::to_dtype(c, t, DType::F32); }

}  // namespace

int quantize_file(const std::string& input, const std::string& output, const std::string& type) {
  std::optional<DType> target = quant_type_from_name(type);
  if (!target) throw UserError("[quantize] unknown type '" + type + "' (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k)");
  io::WeightSet w = io::load_weights(input);
  bool transformer = io::detect_transformer_layout(w) != io::Layout::bfl || w.has("img_in.weight");
  if (transformer) w = io::flux_transformer_weights(w);
  io::NamedTensors out;
  int quantized = 0;
  for (const auto& [n, t] : w.tensors) {
    const int64_t block = info(*target).block_elems;
    if (t.dim() == 2 && t.size(1) % block == 0 && info(t.dtype()).floating && !is_quantized(t.dtype())) {
      std::vector<float> f = t.to_floats();
      Tensor q = Tensor::zeros(t.shape(), *target);
      from_f32(*target, f.data(), q.data<uint8_t>(), t.numel());
      out.push_back({n, q});
      ++quantized;
    } else if (t.dtype() == DType::F8_E4M3 || t.dtype() == DType::F8_E5M2 || t.dtype() == DType::F64) {
      std::vector<float> f = t.to_floats();
      Tensor h = Tensor::zeros(t.shape(), t.dtype() == DType::F64 ? DType::F32 : DType::F16);
      from_f32(h.dtype(), f.data(), h.data<uint8_t>(), t.numel());
      out.push_back({n, h});
    } else {
      out.push_back({n, t});
    }
  }
  nlohmann::json meta = {{"general.architecture", transformer ? "flux" : "unknown"}, {"general.file_type", std::string(name(*target))},
                         {"fluxpipe.quantized_from", input}};
  io::write_gguf(output, out, meta);
  return quantized;
}

ComponentReport run_component(const ComponentRun& r) {
  auto started = std::chrono::steady_clock::now();
  Arena arena;
  Ctx c;
  std::string device_said;
  c.backend = &resolve_device(r.device, &device_said);
  if (c.backend->device() == Device::CPU) c.arena = &arena;
  auto here = [&](io::WeightSet w) { return weights_on(*c.backend, w); };
  if (r.compute == "bf16") c.compute = Compute::BF16;
  else if (r.compute != "f32") fail("--compute must be f32 or bf16, got '" + r.compute + "'");
  if (r.output.empty()) fail("--output is required");
  io::NamedTensors out;

  if (r.component == "randn") {
    if (r.shape.empty()) fail("randn needs --shape, for example 1,16,8,8");
    if (r.dtype != "f32" && r.dtype != "bf16") fail("--dtype must be f32 or bf16");
    out.push_back({"noise", torch_randn(r.seed, r.shape, r.dtype == "bf16" ? DType::BF16 : DType::F32)});
  } else {
    if (r.weights.empty()) fail("--weights is required");
    if (r.inputs.empty()) fail("--inputs is required");
    io::WeightSet in = io::load_weights(r.inputs);
    std::optional<nlohmann::json> params = read_params(r.config);
    auto get = [&](const std::string& n) { return as_f32(c, ops::to_device(c, input(in, n, r.inputs))); };
    if (r.component == "transformer") {
      io::WeightSet w = here(transformer_weights(r.weights));
      flux::Model model(flux::Config::from_weights(w, params ? &*params : nullptr), w);
      Tensor guidance;
      if (model.config().guidance_embed) guidance = get("guidance");
      Tensor o = model.forward(c, get("img"), get("img_ids"), get("txt"), get("txt_ids"), get("timesteps"), get("y"),
                               guidance.defined() ? &guidance : nullptr);
      out.push_back({"output", o});
    } else if (r.component == "vae-decode" || r.component == "vae-encode") {
      io::WeightSet w = here(ae_weights(r.weights));
      vae::Model ae(vae::Config::from_weights(w, params ? &*params : nullptr), w);
      if (r.component == "vae-decode") out.push_back({"decode.out", ae.decode(c, get("decode.z"))});
      else out.push_back({"encode.out", ae.encode(c, get("encode.x"))});
    } else if (r.component == "clip") {
      io::WeightSet w = here(io::text_encoder_weights(io::load_weights(r.weights)));
      text::ClipTextModel clip(text::ClipConfig::from_weights(w, params ? &*params : nullptr), w);
      text::ClipOutput o = clip.forward(c, input(in, "input_ids", r.inputs));
      out.push_back({"last_hidden_state", o.last_hidden_state});
      out.push_back({"pooler_output", o.pooler_output});
    } else if (r.component == "t5") {
      io::WeightSet w = here(io::text_encoder_weights(io::load_weights(r.weights)));
      text::T5Encoder t5(text::T5Config::from_weights(w, params ? &*params : nullptr), w);
      Tensor mask;
      if (r.mask) mask = input(in, "attention_mask", r.inputs);
      out.push_back({"last_hidden_state", t5.forward(c, input(in, "input_ids", r.inputs), r.mask ? &mask : nullptr)});
    } else if (r.component == "sample") {
      if (r.ae.empty()) fail("sample needs --ae (autoencoder weights)");
      io::WeightSet tw = here(transformer_weights(r.weights));
      io::WeightSet aw = here(ae_weights(r.ae));
      std::optional<nlohmann::json> ae_params = read_params(r.ae_config);
      flux::Model model(flux::Config::from_weights(tw, params ? &*params : nullptr), tw);
      vae::Model ae(vae::Config::from_weights(aw, ae_params ? &*ae_params : nullptr), aw);
      Tensor noise = get("noise");
      if (noise.dim() != 4) fail("noise " + noise.describe() + " must be [B, 16, h, w]");
      int64_t B = noise.size(0), h = noise.size(2), w = noise.size(3);
      Tensor txt = get("txt");
      Tensor txt_ids = in.has("txt_ids") ? get("txt_ids") : ops::to_device(c, sampling::text_ids(B, txt.size(1)));
      sampling::DenoiseInputs d{sampling::pack(c, noise), ops::to_device(c, sampling::image_ids(B, h, w)), txt, txt_ids, get("vec"),
                                sampling::schedule(r.steps, (h / 2) * (w / 2), model.config().guidance_embed),
                                std::nullopt, Tensor(), Tensor(), 1.0f};
      if (model.config().guidance_embed) d.guidance = in.has("guidance") ? input(in, "guidance", r.inputs).to_floats()[0] : r.guidance;
      Tensor final = sampling::denoise(c, model, d);
      Tensor latents = sampling::unpack(c, final, h, w);
      Tensor image = ae.decode(c, latents);
      out.push_back({"latents_packed_final", final});
      out.push_back({"latents_unpacked", latents});
      out.push_back({"image", image});
      // The reference stores the 8-bit image as float values 0..255.
      out.push_back({"image_u8", ops::to_dtype(c, ops::to_u8(c, image), DType::F32)});
    } else {
      fail("unknown component '" + r.component + "' (transformer, vae-decode, vae-encode, sample, randn, clip, t5)");
    }
  }
  ComponentReport rep;
  // Copies out of the arena (the file writer needs the tensors after the arena is gone).
  io::NamedTensors owned;
  for (auto& [n, t] : out) {
    Tensor host = ops::to_host(c, t);
    Tensor copy = Tensor::zeros(host.shape(), host.dtype());
    std::memcpy(copy.data<uint8_t>(), host.data<uint8_t>(), host.nbytes());
    owned.push_back({n, copy});
    rep.written.push_back(n);
  }
  io::write_safetensors(r.output, owned, {{"producer", "fluxpipe run " + r.component}});
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  rep.peak_rss_bytes = peak_rss_bytes();
  rep.arena_peak_bytes = arena.peak();
  rep.device = device_said;
  return rep;
}

}  // namespace fluxpipe

namespace fluxpipe {

TokenizedText tokenize_text(const std::string& which, const std::string& path, const std::string& text, int length) {
  std::string base = tokenizer::shipped_tokenizer_dir();
  tokenizer::Encoding e;
  if (which == "clip") {
    // A tokenizer folder (vocab.json + merges.txt); a model folder's tokenizer/ works too.
    e = tokenizer::ClipTokenizer(path.empty() ? base + "/clip" : path).encode(text, length);
  } else if (which == "t5") {
    std::string file = path.empty() ? base + "/t5-v1_1-xxl/spiece.model" : path;
    if (std::filesystem::is_directory(file)) file += "/spiece.model";
    e = tokenizer::T5Tokenizer(file).encode(text, length);
  } else {
    throw UserError("[tokenize] unknown tokenizer '" + which + "' (expected clip or t5)");
  }
  return {e.ids, e.truncated};
}

}  // namespace fluxpipe
