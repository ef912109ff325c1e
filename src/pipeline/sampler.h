// fluxpipe pipeline: FLUX.1 sampling — the timestep schedule (schnell: none; dev: shifted by
// image size), packing latents into 2x2 patches and back, position ids, Euler steps over the
// transformer, and conversion of the decoded image to 8-bit RGB. Matches BFL's sampling.py.
// Thread-safety: pure functions; denoise() runs one model on one Ctx.
// Letters: B batch, h/w latent size (pixels / 8 for the real autoencoder), Li = (h/2)(w/2).
#pragma once

#include <functional>
#include <vector>

#include "models/flux/flux.h"
#include "models/vae/vae.h"
#include "ops/ops.h"

namespace fluxpipe::sampling {

// steps + 1 timesteps from 1 to 0: float32 linspace as PyTorch computes it, then (shift)
// t' = e^mu / (e^mu + 1/t - 1) with mu linear in image_seq_len from (256, 0.5) to (4096, 1.15).
std::vector<float> schedule(int steps, int64_t image_seq_len, bool shift, double base_shift = 0.5,
                            double max_shift = 1.15);

// latent [B, C, h, w] -> tokens [B, (h/2)(w/2), C*4], feature = c*4 + ph*2 + pw. REQUIRES even h, w.
Tensor pack(Ctx& c, const Tensor& latent);
// The inverse: tokens [B, (h/2)(w/2), C*4] -> [B, C, h, w].
Tensor unpack(Ctx& c, const Tensor& tokens, int64_t h, int64_t w);
// [B, (h/2)(w/2), 3] ids (0, row, col) of the packed tokens; text ids are zeros [B, Lt, 3].
Tensor image_ids(int64_t B, int64_t h, int64_t w);
Tensor text_ids(int64_t B, int64_t Lt);

// Called after each step with (steps done, total); return false to stop (denoise then throws
// Cancelled from pipeline.h).
using StepHook = std::function<bool(int, int)>;

struct DenoiseInputs {
  Tensor img;        // [B, Li, 64] packed noise at t = 1
  Tensor img_ids;    // [B, Li, 3]
  Tensor txt;        // [B, Lt, ctx]
  Tensor txt_ids;    // [B, Lt, 3]
  Tensor vec;        // [B, vec_in] pooled text vector
  std::vector<float> timesteps;
  std::optional<float> guidance;   // dev models
  // True classifier-free guidance (the negative prompt's conditioning): each step runs the
  // model on both and uses neg + true_cfg * (pos - neg). Unused when neg_txt is undefined.
  Tensor neg_txt, neg_vec;
  float true_cfg = 1.0f;
};

// Euler steps x += (t_next - t) * v(x, t); the step size is computed in double from the
// float32 timesteps and rounded to float32, multiply and add kept separate, as the reference.
Tensor denoise(Ctx& c, const flux::Model& model, const DenoiseInputs& in, const StepHook& hook = {},
               const flux::Trace& trace = {});

// From text conditioning to 8-bit pixels, the part of text-to-image after the text encoders:
// noise from each seed (PyTorch's CPU float32 draw, as BFL and ComfyUI) at the latent size the
// autoencoder implies for width x height, schnell/dev schedule, Euler steps (with true CFG when
// `neg_txt` is set), unpack, decode -> U8 [B, height', width', 3] (the latent grid's size).
struct RenderRequest {
  Tensor txt, vec;                 // [B, Lt, ctx], [B, vec_in]
  Tensor neg_txt, neg_vec;         // optional, same shapes
  float true_cfg = 1.0f;
  std::vector<int64_t> seeds;      // B of them
  int width = 0, height = 0, steps = 4;
  float guidance = 3.5f;           // dev models only
};
Tensor render(Ctx& c, const flux::Model& model, const vae::Model& ae, const RenderRequest& r, const StepHook& hook = {});
// render() up to the denoised latent [B, z_channels, h, w], for callers that decode it themselves.
Tensor render_latents(Ctx& c, const flux::Model& model, const vae::Model& ae, const RenderRequest& r, const StepHook& hook = {});

// image [B, 3, H, W] in [-1, 1] -> U8 [B, H, W, 3] on the host: clamp, 127.5 * (x + 1),
// truncated, on the context's device; only the 8-bit image crosses to the host.
Tensor to_u8(Ctx& c, const Tensor& image);

}  // namespace fluxpipe::sampling
