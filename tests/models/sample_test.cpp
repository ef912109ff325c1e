// Schnell sampling end to end against BFL's sampling.py (flux-tiny/sample_io): noise ->
// pack -> schedule -> 4 Euler steps -> unpack -> autoencoder decode -> 8-bit image; the dev
// sampling run (shifted schedule, guidance) in transformer_dev_io; and the autoencoder alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>

#include "backend/cpu/isa.h"
#include "backend/cpu/winograd.h"
#include "golden.h"
#include "models/vae/vae.h"
#include "pipeline/noise.h"
#include "pipeline/sampler.h"

namespace fluxpipe::testing {
namespace {

struct Tiny {
  io::WeightSet tw = io::load_weights(testdata("flux-tiny/transformer.safetensors"));
  io::WeightSet aw = io::load_weights(testdata("flux-tiny/ae.safetensors"));
  nlohmann::json tp = read_json(testdata("flux-tiny/transformer_params.json"));
  nlohmann::json ap = read_json(testdata("flux-tiny/ae_params.json"));
  flux::Model flux{flux::Config::from_weights(tw, &tp), tw};
  vae::Model ae{vae::Config::from_weights(aw, &ap), aw};
};

TEST(Sampling, SchedulesMatchTheReference) {
  io::WeightSet g = io::load_weights(testdata("flux-tiny/sample_io.safetensors"));
  auto as_tensor = [](const std::vector<float>& v) { return Tensor::from_floats({static_cast<int64_t>(v.size())}, v); };
  expect_matches(as_tensor(sampling::schedule(4, 16, false)), g.at("timesteps"), 0, 0, "schnell schedule (exact)");
  expect_matches(as_tensor(sampling::schedule(4, 16, true)), g.at("schedule_shift_true"), 1e-6, 0, "shifted, 16 tokens");
  expect_matches(as_tensor(sampling::schedule(4, 4096, true)), g.at("schedule_shift_true_steps4_seq4096"), 1e-6, 0, "4 steps, 4096");
  expect_matches(as_tensor(sampling::schedule(50, 4096, true)), g.at("schedule_shift_true_steps50_seq4096"), 1e-6, 0, "50 steps");
  expect_matches(as_tensor(sampling::schedule(28, 1024, true)), g.at("schedule_shift_true_steps28_seq1024"), 1e-6, 0, "28 steps");
  EXPECT_FLOAT_EQ(sampling::schedule(3, 1, false)[1], 0.6666666269f);   // PyTorch's, not the nearest float to 2/3
}

TEST(Sampling, PackUnpackAndIds) {
  io::WeightSet g = io::load_weights(testdata("flux-tiny/sample_io.safetensors"));
  Ctx c;
  Tensor packed = sampling::pack(c, g.at("noise"));
  expect_matches(packed, g.at("img_packed_init"), 0, 0, "pack(noise)");
  expect_matches(sampling::unpack(c, packed, 8, 8), g.at("noise"), 0, 0, "unpack(pack(noise))");
  expect_matches(sampling::image_ids(1, 8, 8), g.at("img_ids"), 0, 0, "img_ids");
}

TEST(Sampling, FullSchnellRunDownToTheEightBitImage) {
  Tiny m;
  io::WeightSet g = io::load_weights(testdata("flux-tiny/sample_io.safetensors"));
  Ctx c;
  // The noise itself comes from our torch-compatible generator (seed 42 in the metadata).
  Tensor noise = torch_randn(42, {1, 16, 8, 8}, DType::F32);
  expect_matches(noise, g.at("noise"), 1e-6, 1e-6, "noise from seed 42");
  sampling::DenoiseInputs in{sampling::pack(c, g.at("noise")), g.at("img_ids"), g.at("txt"), g.at("txt_ids"), g.at("vec"),
                             sampling::schedule(4, 16, false), std::nullopt, Tensor(), Tensor(), 1.0f};
  std::map<std::string, Tensor> seen;
  Tensor final = sampling::denoise(c, m.flux, in, {}, [&](const std::string& n, const Tensor& t) { seen[n] = t; });
  for (int i = 0; i < 4; ++i) {
    std::string s = "step." + std::to_string(i);
    expect_matches(seen[s + ".pred"], g.at(s + ".pred"), 1e-4, 1e-4, s + ".pred");
    expect_matches(seen[s + ".latent"], g.at(s + ".latent"), 1e-4, 1e-4, s + ".latent");
  }
  expect_matches(final, g.at("latents_packed_final"), 1e-4, 1e-4, "latents_packed_final");
  Tensor latents = sampling::unpack(c, final, 8, 8);
  expect_matches(latents, g.at("latents_unpacked"), 1e-4, 1e-4, "latents_unpacked");
  Tensor image = m.ae.decode(c, latents);
  expect_matches(image, g.at("image"), 1e-4, 1e-4, "image");
  Tensor u8 = sampling::to_u8(c, image);
  std::vector<float> a = u8.to_floats(), b = g.at("image_u8").to_floats();
  ASSERT_EQ(a.size(), b.size());
  int off_by_one = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LE(std::fabs(a[i] - b[i]), 1.0f) << i;
    off_by_one += a[i] != b[i];
  }
  EXPECT_LE(off_by_one, 3) << "pixels off by one at the truncation boundary";
}

TEST(Sampling, ThePipelinesRenderReproducesTheReferenceImage) {
  // The text-to-image code after the text encoders (sampling::render, what `generate` and the
  // server run) on the tiny reference models, given the reference's conditioning and seed.
  Tiny m;
  io::WeightSet g = io::load_weights(testdata("flux-tiny/sample_io.safetensors"));
  Ctx c;
  sampling::RenderRequest r{g.at("txt"), g.at("vec"), Tensor(), Tensor(), 1.0f, {42}, 16, 16, 4, 3.5f};
  Tensor u8 = sampling::render(c, m.flux, m.ae, r);
  ASSERT_EQ(u8.shape(), (Shape{1, 16, 16, 3}));
  std::vector<float> a = u8.to_floats(), b = g.at("image_u8").to_floats();
  int off = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LE(std::fabs(a[i] - b[i]), 1.0f) << i;
    off += a[i] != b[i];
  }
  EXPECT_LE(off, 3);
}

TEST(Sampling, DevRunWithShiftedScheduleAndGuidance) {
  io::WeightSet w = io::load_weights(testdata("flux-tiny/transformer_dev.safetensors"));
  io::WeightSet g = io::load_weights(testdata("flux-tiny/transformer_dev_io.safetensors"));
  nlohmann::json p = read_json(testdata("flux-tiny/transformer_dev_params.json"));
  flux::Model model(flux::Config::from_weights(w, &p), w);
  Ctx c;
  std::vector<float> ts = sampling::schedule(4, 16, true);
  expect_matches(Tensor::from_floats({5}, ts), g.at("sample.timesteps"), 1e-6, 0, "dev timesteps");
  float guidance = g.at("sample.guidance").to_floats()[0];
  sampling::DenoiseInputs in{g.at("sample.img_packed_init"), g.at("img_ids"), g.at("txt"), g.at("txt_ids"), g.at("y"), ts, guidance, Tensor(), Tensor(), 1.0f};
  Tensor final = sampling::denoise(c, model, in);
  expect_matches(final, g.at("sample.latents_packed_final"), 5e-4, 5e-4, "dev latents_packed_final");
}

TEST(Autoencoder, DecodeAndEncodeWithIntermediates) {
  Tiny m;
  io::WeightSet g = io::load_weights(testdata("flux-tiny/ae_io.safetensors"));
  Ctx c;
  for (const char* which : {"decode", "encode"}) {
    std::map<std::string, Tensor> seen;
    auto trace = [&](const std::string& n, const Tensor& t) { seen[n] = t; };
    std::string w = which;
    Tensor out = w == "decode" ? m.ae.decode(c, g.at("decode.z"), trace) : m.ae.encode(c, g.at("encode.x"), trace);
    expect_matches(out, g.at(w + ".out"), 1e-4, 1e-4, w + ".out");
    int compared = 0;
    for (const auto& [name, want] : g.tensors) {
      std::string prefix = w + ".inter.";
      if (name.rfind(prefix, 0) != 0) continue;
      std::string key = name.substr(prefix.size());
      ASSERT_TRUE(seen.count(key)) << "no intermediate '" << key << "'";
      expect_matches(seen[key], want, 1e-4, 1e-4, name);
      ++compared;
    }
    EXPECT_GE(compared, 9) << which;
  }
}

// The decode as the engine runs it (BF16 products) against the same golden output, through the
// direct convolutions and through the Winograd ones (backend/cpu/winograd.h: the CPU's default
// for wide layers without AMX, forced here onto the tiny model's 64-channel layers): both within
// the bf16 rounding of the activations, and Winograd no farther from the reference than the
// direct path by more than its own small transform error.
TEST(Autoencoder, Bf16DecodeWithWinogradConvolutionsMatchesTheReference) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "the Winograd convolution needs AVX2 + FMA";
  Tiny m;
  io::WeightSet g = io::load_weights(testdata("flux-tiny/ae_io.safetensors"));
  Ctx c;
  c.compute = Compute::BF16;
  const Tensor& want = g.at("decode.out");
  auto error = [&](const Tensor& got) {
    std::vector<float> a = got.to_floats(), b = want.to_floats();
    double scale = 0, diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
      diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    }
    return diff / scale;
  };
  cpu::winograd_force(0);
  const double direct = error(m.ae.decode(c, g.at("decode.z")));
  cpu::winograd_force(1);
  const double wino = error(m.ae.decode(c, g.at("decode.z")));
  cpu::winograd_force(-1);
  EXPECT_LT(direct, 2e-2);
  EXPECT_LT(wino, 2e-2);
  EXPECT_LT(wino, direct * 1.5 + 1e-4) << "direct " << direct << ", Winograd " << wino;
  std::printf("bf16 decode, max error over max |reference|: direct %.3g, Winograd %.3g\n", direct, wino);
}

}  // namespace
}  // namespace fluxpipe::testing
