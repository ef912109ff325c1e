// The FLUX.1 text-to-image engine behind pipeline.h: tokenize -> CLIP pooled vector + T5
// tokens -> noise (PyTorch's CPU float32 draw, one seed per image) -> schnell/dev sampling
// (true CFG with a negative prompt) -> autoencoder decode -> 8-bit RGB.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <list>
#include <set>

#include "backend/cpu/gemm_int8.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/winograd.h"
#include "core/block_cache.h"
#include "core/error.h"
#include "models/flux/flux.h"
#include "models/text/encoders.h"
#include "models/vae/vae.h"
#include "pipeline/device_select.h"
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
  // `files` already on `backend`'s device; `gpu_free` the GPU memory free before they were copied.
  FluxEngine(ModelFiles files, const EngineOptions& options, Backend& backend, std::string device_said, size_t gpu_free)
      : options_(options),
        backend_(&backend),
        device_said_(std::move(device_said)),
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
    size_t held = options_.held_bytes ? options_.held_bytes : resident_bytes() + (size_t{256} << 20);
    if (on_gpu()) {
      // On a GPU every part stays resident: the budget is what was free there, and the weights
      // plus the backend's scratch (products' workspace, attention scores and im2col columns in
      // chunks of at most 1 GiB) are held from the start.
      budget = options_.vram_budget ? std::min(options_.vram_budget, gpu_free) : gpu_free;
      held = io::total_bytes(files_.transformer) + io::total_bytes(files_.ae) + io::total_bytes(files_.clip) +
             io::total_bytes(files_.t5) + (size_t{2} << 30);
    }
    planner_ = std::make_unique<MemoryPlanner>(budget, held);
    auto part = [&](const char* name, const io::WeightSet& w) {
      // The part's bytes: the weights and what the backend may derive from them (on CPUs without
      // AMX, the decoder's Winograd kernels: about 0.7 GB for FLUX.1's).
      size_t bytes = io::total_bytes(w);
      for (const auto& [n, t] : w.tensors) {
        if (t.defined()) bytes += backend_->weight_copy_bytes(t);
      }
      return planner_->add_part(name, bytes, [this, &w] {
        io::release_resident_pages(w);
        // The backend's reordered copies of these weights hold their memory in place of the pages.
        std::set<const Storage*> storages;
        for (const auto& [n, t] : w.tensors) {
          if (t.defined() && storages.insert(t.storage().get()).second) backend_->release_weight_copies(*t.storage());
        }
      });
    };
    part_transformer_ = part("transformer", files_.transformer);
    part_ae_ = part("autoencoder", files_.ae);
    part_clip_ = part("CLIP encoder", files_.clip);
    part_t5_ = part("T5 encoder", files_.t5);
  }

  std::string model_name() const override {
    return files_.name + (files_.test_model ? " (random-weight test model, not FLUX.1)" : "");
  }

  JobFit check_fit(const GenerateJob& job) const override {
    const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(job.seeds.size()));
    const int64_t m = cfg_run(job) ? 2 : 1;   // true CFG runs the model on both conditionings
    const size_t budget = planner_->budget(), held = planner_->reserved();
    const size_t room = budget > held ? budget - held : 0;
    // On the CPU the transformer's pages can be evicted and re-read; on a GPU they are counted in `held`.
    const size_t weights = on_gpu() ? 0 : planner_->part_bytes(part_transformer_);
    auto act_at = [&](int64_t width, int64_t height) {
      int64_t tokens = image_tokens(width, height);
      return [=, this](int64_t b) { return denoise_activation_bytes(b * m, tokens, t5_len(), flux_.config().hidden); };
    };
    // Only the denoising's working memory grows with the image and the batch: text encoding's is
    // fixed and small, and decoding is tiled to what is left (automatic tiling).
    int64_t batch = batch_that_fits(count, weights, room, act_at(job.width, job.height));
    if (batch > 0) return {true, static_cast<int>(batch), ""};

    auto gib = [](size_t b) {
      char s[32];
      if (b < (size_t{1} << 30)) std::snprintf(s, sizeof s, "%zu MiB", (b + (size_t{1} << 19)) >> 20);
      else std::snprintf(s, sizeof s, "%.1f GiB", static_cast<double>(b) / static_cast<double>(size_t{1} << 30));
      return std::string(s);
    };
    std::string budget_text = on_gpu() ? "the engine plans each job within " + gib(budget) +
                                             " of GPU memory (--vram-budget; default what was free at load), " + gib(held) +
                                             " of which its weights and scratch hold"
                                       : "the engine plans each job within a memory budget of " + gib(budget) + ", " + gib(held) +
                                             " of which the process itself holds";
    int64_t side = 0;
    for (int64_t s = 16; s <= 16384 && act_at(s, s)(1) <= room; s += 16) side = s;
    std::string reason = "a " + std::to_string(job.width) + "x" + std::to_string(job.height) + " image needs about " +
                         gib(act_at(job.width, job.height)(1)) + " of working memory while denoising" +
                         (m == 2 ? " (a negative prompt doubles it)" : "") + ", and " + budget_text + "; ";
    reason += side > 0 ? "the largest square image that fits is " + std::to_string(side) + "x" + std::to_string(side) +
                             " (or as many pixels in another shape)"
                       : "no image size fits" + std::string(m == 2 ? " with a negative prompt" : "");
    return {false, 0, reason};
  }

  std::vector<Image> generate(const GenerateJob& job, const StepCallback& on_step) override {
    JobFit fit = check_fit(job);
    if (!fit.fits) throw UserError(fit.reason);
    Ctx c;
    c.backend = backend_;
    c.compute = Compute::BF16;
    const int64_t B = static_cast<int64_t>(job.seeds.size());
    const int64_t batch = std::clamp<int64_t>(fit.batch, 1, B);
    const int batches = static_cast<int>((B + batch - 1) / batch);
    // The prompt's conditioning, once: [1, Lt, ctx] tokens and the [1, vec_in] pooled vector —
    // from the text cache when this prompt was encoded lately.
    auto encode = [&](const std::string& prompt, Tensor* txt, Tensor* vec) {
      if (const Encoded* hit = text_cache_find(prompt)) {
        *txt = hit->txt;
        *vec = hit->vec;
        truncated_ = truncated_ || hit->truncated;
        return;
      }
      tokenizer::Encoding ce = clip_tok_.encode(prompt, static_cast<int>(std::min<int64_t>(77, clip_.config().positions)));
      tokenizer::Encoding te = t5_tok_.encode(prompt, t5_len());
      std::vector<float> cid(ce.ids.begin(), ce.ids.end()), tid(te.ids.begin(), te.ids.end());
      *vec = clip_.forward(c, Tensor::from_floats({1, static_cast<int64_t>(cid.size())}, cid)).pooler_output;
      *txt = t5_.forward(c, Tensor::from_floats({1, static_cast<int64_t>(tid.size())}, tid));
      truncated_ = truncated_ || ce.truncated || te.truncated;
      text_cache_put(prompt, {*txt, *vec, ce.truncated || te.truncated});
    };
    // The same conditioning for every image of a batch: [n, ...].
    auto repeat = [&](const Tensor& t, int64_t n) {
      if (!t.defined() || n == 1) return t;
      return ops::concat(c, std::vector<Tensor>(static_cast<size_t>(n), t), 0);
    };
    truncated_ = false;
    stages_.clear();
    auto mark = std::chrono::steady_clock::now();
    auto seconds_since = [](std::chrono::steady_clock::time_point t) {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    };
    plan_.clear();
    const bool cfg = cfg_run(job);
    // The encoders are paged in (or kept) only when a prompt is not in the text cache.
    const bool encoders_run = !text_cache_find(job.prompt) || (cfg && !text_cache_find(job.negative_prompt));
    if (encoders_run) enter({part_clip_, part_t5_}, text_activation_bytes(t5_.config().d_model), "text encoding");
    Tensor txt, vec, neg_txt, neg_vec;
    encode(job.prompt, &txt, &vec);
    if (cfg) encode(job.negative_prompt, &neg_txt, &neg_vec);
    block_cache::trim();   // each phase starts with no kept activation blocks (see core/block_cache.h)
    stages_.push_back({encoders_run ? "text encoders" : "text encoders (cached)", seconds_since(mark)});
    if (batches > 1) {
      plan_.push_back("denoised in " + std::to_string(batches) + " batches of at most " + std::to_string(batch) +
                      " images (the budget does not hold all " + std::to_string(B) + " at once)");
    }

    std::vector<Image> out;
    double denoise_s = 0, decode_s = 0;
    for (int k = 0; k < batches; ++k) {
      const int64_t first = k * batch, n = std::min<int64_t>(batch, B - first);
      std::vector<int64_t> seeds(job.seeds.begin() + first, job.seeds.begin() + first + n);
      sampling::RenderRequest rr{repeat(txt, n), repeat(vec, n), repeat(neg_txt, n), repeat(neg_vec, n),
                                 job.true_cfg_scale, seeds, job.width, job.height, job.steps, 3.5f};
      enter({part_transformer_}, denoise_activation_bytes(cfg ? 2 * n : n, image_tokens(job.width, job.height), t5_len(), flux_.config().hidden),
            "denoising");
      auto start = std::chrono::steady_clock::now();
      auto hook = [&](int done, int total) { return on_step(k * total + done, batches * total); };
      Tensor z = sampling::render_latents(c, flux_, ae_, rr, hook);   // [n, z, h, w]
      block_cache::trim();
      denoise_s += seconds_since(start);
      start = std::chrono::steady_clock::now();
      Tensor u8 = sampling::to_u8(c, decode(c, z));                      // [n, H, W, 3]
      block_cache::trim();   // the batch's activation blocks go back to the system
      decode_s += seconds_since(start);
      int64_t H = u8.size(1), W = u8.size(2);
      for (int64_t b = 0; b < n; ++b) {
        Image img{static_cast<int>(W), static_cast<int>(H), {}};
        const uint8_t* p = u8.data<uint8_t>() + b * H * W * 3;
        img.rgb.assign(p, p + H * W * 3);
        out.push_back(crop(img, job.width, job.height));
      }
    }
    stages_.push_back({"denoising", denoise_s});
    stages_.push_back({"decoding", decode_s});
    return out;
  }

  bool last_prompt_truncated() const override { return truncated_; }
  std::string last_memory_plan() const override {
    std::string s;
    for (const std::string& p : plan_) s += (s.empty() ? "" : "; ") + p;
    return s.empty() ? "kept every part resident" : s;
  }
  std::vector<std::pair<std::string, double>> last_stage_seconds() const override { return stages_; }
  std::string device_name() const override { return device_said_; }

 private:
  int t5_len() const { return flux_.config().guidance_embed ? 512 : 256; }   // dev reads 512 tokens, schnell 256
  static bool cfg_run(const GenerateJob& job) { return !job.negative_prompt.empty() && job.true_cfg_scale > 1.0f; }
  // Packed image tokens of a width x height image: (latent h / 2) * (latent w / 2).
  int64_t image_tokens(int64_t width, int64_t height) const {
    const int64_t f = ae_.spatial_factor();
    return ((height + 2 * f - 1) / (2 * f)) * ((width + 2 * f - 1) / (2 * f));
  }
  bool on_gpu() const { return backend_->device() != Device::CPU; }

  // ---- the text cache: prompt -> its CLIP and T5 outputs, the most recently used first ----
  struct Encoded {
    Tensor txt, vec;   // [1, Lt, ctx], [1, vec_in] on the engine's device (fresh allocations, not an arena's)
    bool truncated = false;
  };
  const Encoded* text_cache_find(const std::string& prompt) {
    for (auto it = text_cache_.begin(); it != text_cache_.end(); ++it) {
      if (it->first != prompt) continue;
      text_cache_.splice(text_cache_.begin(), text_cache_, it);   // most recent first
      return &text_cache_.front().second;
    }
    return nullptr;
  }
  void text_cache_put(const std::string& prompt, Encoded e) {
    if (options_.text_cache == 0) return;
    text_cache_.emplace_front(prompt, std::move(e));
    while (text_cache_.size() > options_.text_cache) text_cache_.pop_back();
  }
  // Before a phase: the planner releases host parts it must (on a GPU nothing is released).
  void enter(const std::vector<int>& parts, size_t activation_bytes, const char* phase) {
    if (!on_gpu()) note_released(planner_->enter(parts, activation_bytes), phase);
  }
  // Memory for a decode's activations with the autoencoder resident (and, on a GPU, everything).
  size_t decode_room() const {
    if (!on_gpu()) return planner_->room_with_only({part_ae_});
    return planner_->budget() > planner_->reserved() ? planner_->budget() - planner_->reserved() : 0;
  }
  // Records the parts a phase released (once each, however many batches).
  void note_released(const std::vector<std::string>& names, const char* before) {
    for (const std::string& n : names) {
      std::string line = "released the " + n + " before " + before;
      if (std::find(plan_.begin(), plan_.end(), line) == plan_.end()) plan_.push_back(line);
    }
  }

  // Decodes whole when that fits the budget (releasing other parts first if that is what it
  // takes), in tiles otherwise, or as the options force.
  Tensor decode(Ctx& c, const Tensor& z) {
    const int64_t B = z.size(0), f = ae_.spatial_factor(), pixels = z.size(2) * z.size(3) * f * f;
    const size_t whole = decode_activation_bytes(1, pixels) * static_cast<size_t>(B);
    bool tiled = options_.vae_tiling == Tiling::on;
    if (options_.vae_tiling == Tiling::automatic) {
      tiled = whole > decode_room();
    }
    if (!tiled) {
      enter({part_ae_}, whole, "decoding");
      return ae_.decode(c, z);
    }
    // Tiles sized to what is left once everything but the autoencoder is released (if needed).
    size_t room = decode_room();
    int64_t tile = decode_tile_for(room, f);
    if (options_.vae_tiling == Tiling::on) tile = std::min<int64_t>(tile, 64);   // forced: 512-pixel tiles at most
    const int64_t overlap = std::max<int64_t>(4, tile / 4);
    enter({part_ae_}, decode_activation_bytes(1, tile * tile * f * f), "decoding");
    size_t tiles = vae::tile_spans(z.size(2), tile, overlap).size() * vae::tile_spans(z.size(3), tile, overlap).size();
    std::string line = "decoded in " + std::to_string(tiles * static_cast<size_t>(B)) + " tiles of " + std::to_string(tile * f) +
                       " pixels (overlap " + std::to_string(overlap * f) + ")";
    if (tiles > 1 && std::find(plan_.begin(), plan_.end(), line) == plan_.end()) plan_.push_back(line);
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
  Backend* backend_;
  std::string device_said_;
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
  std::list<std::pair<std::string, Encoded>> text_cache_;   // at most options_.text_cache entries
};

}  // namespace

Tiling parse_tiling(const std::string& op, const std::string& text) {
  if (text == "auto") return Tiling::automatic;
  if (text == "on") return Tiling::on;
  if (text == "off") return Tiling::off;
  throw UserError("[" + op + "] --vae-tiling: '" + text + "' is not auto, on or off");
}

std::unique_ptr<Engine> load_engine(const std::string& model_path, const EngineOptions& options) {
  // FLUXPIPE_ISA, FLUXPIPE_INT8 and FLUXPIPE_WINOGRAD are read at first use: check them now, so a
  // typo fails the start (naming the variable) and not the first job.
  (void)cpu::active_isa();
  (void)cpu::gemm_int8_available(DType::Q8_0);
  (void)cpu::winograd_policy();
  std::string said;
  size_t gpu_free = 0;   // before the weights are copied there
  Backend& backend = resolve_device(options.device, &said, &gpu_free);
  ModelFiles files = find_model_files(model_path);
  if (backend.device() != Device::CPU) {
    for (io::WeightSet* w : {&files.transformer, &files.ae, &files.clip, &files.t5}) *w = weights_on(backend, *w);
  }
  return std::make_unique<FluxEngine>(std::move(files), options, backend, said, gpu_free);
}

}  // namespace fluxpipe
