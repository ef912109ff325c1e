#include "pipeline/sampler.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "pipeline/noise.h"
#include "pipeline/pipeline.h"

namespace fluxpipe::sampling {

std::vector<float> schedule(int steps, int64_t image_seq_len, bool shift, double base_shift, double max_shift) {
  if (steps < 1) throw UserError("[schedule] steps must be at least 1, got " + std::to_string(steps));
  // torch.linspace(1, 0, steps + 1) in float32: from the start for the first half, from the end after.
  const int n = steps + 1;
  const float start = 1.0f, end = 0.0f;
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  std::vector<float> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    t[static_cast<size_t>(i)] = i < halfway ? start + step * static_cast<float>(i) : end - step * static_cast<float>(n - i - 1);
  }
  if (!shift) return t;
  const double m = (max_shift - base_shift) / (4096.0 - 256.0);
  const double mu = m * static_cast<double>(image_seq_len) + (base_shift - m * 256.0);
  const float e = static_cast<float>(std::exp(mu));
  for (float& x : t) {
    // e^mu / (e^mu + (1/t - 1)), float32 throughout; 1/0 = inf takes t = 0 to 0.
    float inv = 1.0f / x;
    float denom = e + (inv - 1.0f);
    x = (1.0f / denom) * e;
  }
  return t;
}

Tensor pack(Ctx& c, const Tensor& latent) {
  if (latent.dim() != 4 || latent.size(2) % 2 || latent.size(3) % 2) {
    throw UserError("[pack] latent " + latent.describe() + " must be [B, C, h, w] with even h and w");
  }
  int64_t B = latent.size(0), C = latent.size(1), h = latent.size(2), w = latent.size(3);
  // b c (h 2) (w 2) -> b h w c 2 2 -> b (h w) (c 2 2)
  Tensor v = latent.reshape({B, C, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5});
  return ops::contiguous(c, v).reshape({B, (h / 2) * (w / 2), C * 4});
}

Tensor unpack(Ctx& c, const Tensor& tokens, int64_t h, int64_t w) {
  if (tokens.dim() != 3 || tokens.size(1) != (h / 2) * (w / 2) || tokens.size(2) % 4 || h % 2 || w % 2) {
    throw UserError("[unpack] tokens " + tokens.describe() + " do not fit a " + std::to_string(h) + "x" + std::to_string(w) + " latent");
  }
  int64_t B = tokens.size(0), C = tokens.size(2) / 4;
  Tensor v = tokens.reshape({B, h / 2, w / 2, C, 2, 2}).permute({0, 3, 1, 4, 2, 5});
  return ops::contiguous(c, v).reshape({B, C, h, w});
}

Tensor image_ids(int64_t B, int64_t h, int64_t w) {
  int64_t rows = h / 2, cols = w / 2;
  std::vector<float> v(static_cast<size_t>(B * rows * cols * 3), 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t col = 0; col < cols; ++col) {
        size_t i = static_cast<size_t>(((b * rows + r) * cols + col) * 3);
        v[i + 1] = static_cast<float>(r);
        v[i + 2] = static_cast<float>(col);
      }
  return Tensor::from_floats({B, rows * cols, 3}, v);
}

Tensor text_ids(int64_t B, int64_t Lt) { return Tensor::zeros({B, Lt, 3}, DType::F32); }

Tensor denoise(Ctx& c, const flux::Model& model, const DenoiseInputs& in, const StepHook& hook, const flux::Trace& trace) {
  if (in.timesteps.size() < 2) throw UserError("[denoise] need at least two timesteps");
  int64_t B = in.img.size(0);
  Tensor img = in.img;
  Tensor guidance;
  if (in.guidance) guidance = ops::constant(c, {B}, std::vector<float>(static_cast<size_t>(B), *in.guidance));
  int total = static_cast<int>(in.timesteps.size()) - 1;
  for (int i = 0; i < total; ++i) {
    float t_curr = in.timesteps[static_cast<size_t>(i)], t_prev = in.timesteps[static_cast<size_t>(i) + 1];
    Tensor t = ops::constant(c, {B}, std::vector<float>(static_cast<size_t>(B), t_curr));
    Tensor pred = model.forward(c, img, in.img_ids, in.txt, in.txt_ids, t, in.vec, guidance.defined() ? &guidance : nullptr);
    if (in.neg_txt.defined()) {
      Tensor neg = model.forward(c, img, in.img_ids, in.neg_txt, in.txt_ids, t, in.neg_vec, guidance.defined() ? &guidance : nullptr);
      pred = ops::add(c, neg, ops::mul(c, ops::sub(c, pred, neg), ops::constant(c, {1}, {in.true_cfg})));
    }
    float dt = static_cast<float>(static_cast<double>(t_prev) - static_cast<double>(t_curr));
    img = ops::add(c, img, ops::mul(c, pred, ops::constant(c, {1}, {dt})));
    if (trace) {
      trace("step." + std::to_string(i) + ".pred", pred);
      trace("step." + std::to_string(i) + ".latent", img);
    }
    // The step is done when the device says so (a GPU queues work ahead of the host): progress
    // reports finished steps, and a cancel takes effect at the next one.
    c.backend->synchronize();
    if (hook && !hook(i + 1, total)) throw Cancelled();
  }
  return img;
}

Tensor render(Ctx& c, const flux::Model& model, const vae::Model& ae, const RenderRequest& r, const StepHook& hook) {
  return to_u8(c, ae.decode(c, render_latents(c, model, ae, r, hook)));
}

Tensor render_latents(Ctx& c, const flux::Model& model, const vae::Model& ae, const RenderRequest& r, const StepHook& hook) {
  const int64_t B = static_cast<int64_t>(r.seeds.size());
  if (B == 0 || r.txt.size(0) != B || r.vec.size(0) != B) {
    throw UserError("[render] " + std::to_string(B) + " seeds for conditioning " + r.txt.describe() + " / " + r.vec.describe());
  }
  // Latent size: 2 * ceil(side / (2 * factor)), as BFL's get_noise (factor 8: side / 8).
  const int64_t f = ae.spatial_factor();
  const int64_t h = 2 * ((r.height + 2 * f - 1) / (2 * f)), w = 2 * ((r.width + 2 * f - 1) / (2 * f));
  std::vector<Tensor> noises;
  for (int64_t seed : r.seeds) noises.push_back(torch_randn(static_cast<uint64_t>(seed), {1, ae.config().z_channels, h, w}, DType::F32));
  // The noise is drawn on the host (PyTorch's CPU generator) and uploaded once: the job's input.
  Ctx host;
  Tensor noise = B == 1 ? noises[0] : ops::concat(host, noises, 0);
  DenoiseInputs in{pack(c, ops::to_device(c, noise)), ops::to_device(c, image_ids(B, h, w)), r.txt,
                   ops::to_device(c, text_ids(B, r.txt.size(1))), r.vec,
                   schedule(r.steps, (h / 2) * (w / 2), model.config().guidance_embed), std::nullopt, Tensor(), Tensor(), 1.0f};
  if (model.config().guidance_embed) in.guidance = r.guidance;
  if (r.neg_txt.defined()) {
    in.neg_txt = r.neg_txt;
    in.neg_vec = r.neg_vec;
    in.true_cfg = r.true_cfg;
  }
  return unpack(c, denoise(c, model, in, hook), h, w);
}

Tensor to_u8(Ctx& c, const Tensor& image) { return ops::to_host(c, ops::to_u8(c, image)); }

}  // namespace fluxpipe::sampling
