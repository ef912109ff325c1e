// The FLUX.1 text-to-image engine behind pipeline.h: tokenize -> CLIP pooled vector + T5
// tokens -> noise (PyTorch's CPU float32 draw, one seed per image) -> schnell/dev sampling
// (true CFG with a negative prompt) -> autoencoder decode -> 8-bit RGB.
#include <chrono>

#include "core/block_cache.h"
#include "core/error.h"
#include "models/flux/flux.h"
#include "models/text/encoders.h"
#include "models/vae/vae.h"
#include "pipeline/memory_plan.h"
#include "pipeline/model_files.h"
#include "pipeline/noise.h"
#include "pipeline/pipeline.h"
#include "pipeline/sampler.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe {
namespace {

const nlohmann::json* opt(const std::optional<nlohmann::json>& j) { return j ? &*j : nullptr; }

class FluxEngine final : public Engine {
 public:
  FluxEngine(ModelFiles files, const EngineOptions& options)
      : options_(options),
        files_(std::move(files)),
        flux_(flux::Config::from_weights(files_.transformer, opt(files_.transformer_params)), files_.transformer),
        ae_(vae::Config::from_weights(files_.ae, opt(files_.ae_params)), files_.ae),
        clip_(text::ClipConfig::from_weights(files_.clip, opt(files_.clip_config)), files_.clip),
        t5_(text::T5Config::from_weights(files_.t5, opt(files_.t5_config)), files_.t5),
        clip_tok_(files_.clip_tokenizer_dir),
        t5_tok_(files_.t5_tokenizer_file) {
    if (clip_.config().hidden != flux_.config().vec_in_dim) {
      throw UserError("[model] the CLIP encoder is " + std::to_string(clip_.config().hidden) +
                      " wide but the transformer expects a pooled vector of " + std::to_string(flux_.config().vec_in_dim));
    }
    if (t5_.config().d_model != flux_.config().context_in_dim) {
      throw UserError("[model] the T5 encoder is " + std::to_string(t5_.config().d_model) +
                      " wide but the transformer expects text tokens of " + std::to_string(flux_.config().context_in_dim));
    }
    size_t budget = options_.memory_budget ? options_.memory_budget : machine_memory_bytes();
    // What the process holds already (code, libraries, tokenizers; the weights are mapped but not
    // yet read) plus room for kernel scratch and the JIT code oneDNN makes.
    planner_ = std::make_unique<MemoryPlanner>(budget, resident_bytes() + (size_t{256} << 20));
    auto part = [&](const char* name, const io::WeightSet& w) {
      return planner_->add_part(name, io::total_bytes(w), [&w] { io::release_resident_pages(w); });
    };
    part_transformer_ = part("transformer", files_.transformer);
    part_ae_ = part("autoencoder", files_.ae);
    part_clip_ = part("CLIP encoder", files_.clip);
    part_t5_ = part("T5 encoder", files_.t5);
  }

  std::string model_name() const override {
    return files_.name + (files_.test_model ? " (random-weight test model, not FLUX.1)" : "");
  }

  std::vector<Image> generate(const GenerateJob& job, const StepCallback& on_step) override {
    Ctx c;
    c.compute = Compute::BF16;
    const int64_t B = static_cast<int64_t>(job.seeds.size());
    const int t5_len = flux_.config().guidance_embed ? 512 : 256;   // dev reads 512 tokens, schnell 256
    auto encode = [&](const std::string& prompt, Tensor* txt, Tensor* vec) {
      tokenizer::Encoding ce = clip_tok_.encode(prompt, static_cast<int>(std::min<int64_t>(77, clip_.config().positions)));
      tokenizer::Encoding te = t5_tok_.encode(prompt, t5_len);
      std::vector<float> cid(ce.ids.begin(), ce.ids.end()), tid(te.ids.begin(), te.ids.end());
      Tensor pooled = clip_.forward(c, Tensor::from_floats({1, static_cast<int64_t>(cid.size())}, cid)).pooler_output;
      Tensor tokens = t5_.forward(c, Tensor::from_floats({1, static_cast<int64_t>(tid.size())}, tid));
      // The same conditioning for every image of the job: [B, ...].
      std::vector<Tensor> v(static_cast<size_t>(B), pooled), t(static_cast<size_t>(B), tokens);
      *vec = B == 1 ? pooled : ops::concat(c, v, 0);
      *txt = B == 1 ? tokens : ops::concat(c, t, 0);
      truncated_ = truncated_ || ce.truncated || te.truncated;
    };
    truncated_ = false;
    stages_.clear();
    auto mark = std::chrono::steady_clock::now();
    auto stage = [&](const char* name) {
      auto now = std::chrono::steady_clock::now();
      stages_.push_back({name, std::chrono::duration<double>(now - mark).count()});
      mark = now;
    };
    plan_.clear();
    auto note_released = [&](const std::vector<std::string>& names, const char* before) {
      for (const std::string& n : names) plan_.push_back("released the " + n + " before " + before);
    };
    const bool cfg_run = !job.negative_prompt.empty() && job.true_cfg_scale > 1.0f;
    note_released(planner_->enter({part_clip_, part_t5_}, size_t{512} << 20), "text encoding");
    Tensor txt, vec, neg_txt, neg_vec;
    encode(job.prompt, &txt, &vec);
    if (cfg_run) encode(job.negative_prompt, &neg_txt, &neg_vec);
    block_cache::trim();   // each phase starts with no kept activation blocks (see core/block_cache.h)
    stage("text encoders");

    sampling::RenderRequest rr{txt, vec, neg_txt, neg_vec, job.true_cfg_scale, job.seeds, job.width, job.height, job.steps, 3.5f};
    const int64_t f = ae_.spatial_factor();
    const int64_t lat_h = 2 * ((job.height + 2 * f - 1) / (2 * f)), lat_w = 2 * ((job.width + 2 * f - 1) / (2 * f));
    note_released(planner_->enter({part_transformer_}, denoise_activation_bytes(cfg_run ? 2 * B : B, (lat_h / 2) * (lat_w / 2),
                                                                                 txt.size(1), flux_.config().hidden)),
                  "denoising");
    // The two phases of render() are timed together here; the split comes from the step hook.
    double denoise_end = 0;
    auto hook = [&](int done, int total) {
      if (done == total) denoise_end = std::chrono::duration<double>(std::chrono::steady_clock::now() - mark).count();
      return on_step(done, total);
    };
    Tensor z = sampling::render_latents(c, flux_, ae_, rr, hook);   // [B, z, h, w]
    block_cache::trim();
    Tensor u8 = sampling::to_u8(decode(c, z));                      // [B, H, W, 3]
    block_cache::trim();   // the job's activation blocks go back to the system
    double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - mark).count();
    stages_.push_back({"denoising", denoise_end});
    stages_.push_back({"decoding", total_s - denoise_end});
    std::vector<Image> out;
    int64_t H = u8.size(1), W = u8.size(2);
    for (int64_t b = 0; b < B; ++b) {
      Image img{static_cast<int>(W), static_cast<int>(H), {}};
      const uint8_t* p = u8.data<uint8_t>() + b * H * W * 3;
      img.rgb.assign(p, p + H * W * 3);
      out.push_back(crop(img, job.width, job.height));
    }
    return out;
  }

  bool last_prompt_truncated() const override { return truncated_; }
  std::string last_memory_plan() const override {
    std::string s;
    for (const std::string& p : plan_) s += (s.empty() ? "" : "; ") + p;
    return s.empty() ? "kept every part resident" : s;
  }
  std::vector<std::pair<std::string, double>> last_stage_seconds() const override { return stages_; }

 private:
  // Decodes whole when that fits the budget (releasing other parts first if that is what it
  // takes), in tiles otherwise, or as the options force.
  Tensor decode(Ctx& c, const Tensor& z) {
    const int64_t B = z.size(0), f = ae_.spatial_factor(), pixels = z.size(2) * z.size(3) * f * f;
    const size_t whole = decode_activation_bytes(1, pixels) * static_cast<size_t>(B);
    bool tiled = options_.vae_tiling == Tiling::on;
    if (options_.vae_tiling == Tiling::automatic) {
      tiled = whole > planner_->room_with_only({part_ae_});
    }
    if (!tiled) {
      for (const std::string& n : planner_->enter({part_ae_}, whole)) plan_.push_back("released the " + n + " before decoding");
      return ae_.decode(c, z);
    }
    // Tiles sized to what is left once everything but the autoencoder is released (if needed).
    size_t room = planner_->room_with_only({part_ae_});
    int64_t tile = decode_tile_for(room, f);
    if (options_.vae_tiling == Tiling::on) tile = std::min<int64_t>(tile, 64);   // forced: 512-pixel tiles at most
    const int64_t overlap = std::max<int64_t>(4, tile / 4);
    for (const std::string& n : planner_->enter({part_ae_}, decode_activation_bytes(1, tile * tile * f * f))) {
      plan_.push_back("released the " + n + " before decoding");
    }
    size_t tiles = vae::tile_spans(z.size(2), tile, overlap).size() * vae::tile_spans(z.size(3), tile, overlap).size();
    if (tiles > 1) plan_.push_back("decoded in " + std::to_string(tiles * static_cast<size_t>(B)) + " tiles of " + std::to_string(tile * f) +
                    " pixels (overlap " + std::to_string(overlap * f) + ")");
    return ae_.decode_tiled(c, z, tile, overlap);
  }

  // The latent grid is a multiple of 16 pixels; sizes are validated to multiples of 16 already,
  // so this only trims when a smaller autoencoder factor rounds up.
  static Image crop(const Image& img, int width, int height) {
    if (img.width == width && img.height == height) return img;
    Image out{std::min(width, img.width), std::min(height, img.height), {}};
    for (int y = 0; y < out.height; ++y) {
      const uint8_t* row = img.rgb.data() + static_cast<size_t>(y) * img.width * 3;
      out.rgb.insert(out.rgb.end(), row, row + static_cast<size_t>(out.width) * 3);
    }
    return out;
  }

  EngineOptions options_;
  ModelFiles files_;
  flux::Model flux_;
  vae::Model ae_;
  text::ClipTextModel clip_;
  text::T5Encoder t5_;
  tokenizer::ClipTokenizer clip_tok_;
  tokenizer::T5Tokenizer t5_tok_;
  bool truncated_ = false;
  std::vector<std::pair<std::string, double>> stages_;
  std::unique_ptr<MemoryPlanner> planner_;
  int part_transformer_ = 0, part_ae_ = 0, part_clip_ = 0, part_t5_ = 0;
  std::vector<std::string> plan_;
};

}  // namespace

Tiling parse_tiling(const std::string& op, const std::string& text) {
  if (text == "auto") return Tiling::automatic;
  if (text == "on") return Tiling::on;
  if (text == "off") return Tiling::off;
  throw UserError("[" + op + "] --vae-tiling: '" + text + "' is not auto, on or off");
}

std::unique_ptr<Engine> load_engine(const std::string& model_path, const EngineOptions& options) {
  return std::make_unique<FluxEngine>(find_model_files(model_path), options);
}

}  // namespace fluxpipe
