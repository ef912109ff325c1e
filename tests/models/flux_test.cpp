// The Flux transformer against BFL's reference on the tiny random-weight models in
// ../shared/testdata/flux-tiny: the forward output and every named intermediate.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "golden.h"
#include "core/error.h"
#include "models/flux/flux.h"

namespace fluxpipe::testing {
namespace {

struct Case {
  const char* weights;
  const char* io;
  const char* params;
  double tol;   // the README's: 1e-4 schnell, 5e-4 dev (guidance embedding arguments reach 3500)
};

void run_case(const Case& k) {
  io::WeightSet w = io::load_weights(testdata(std::string("flux-tiny/") + k.weights));
  io::WeightSet g = io::load_weights(testdata(std::string("flux-tiny/") + k.io));
  nlohmann::json params = read_json(testdata(std::string("flux-tiny/") + k.params));
  flux::Config cfg = flux::Config::from_weights(w, &params);
  EXPECT_EQ(cfg.num_heads, params["num_heads"].get<int64_t>());
  EXPECT_EQ(cfg.depth, params["depth"].get<int>());
  EXPECT_EQ(cfg.depth_single, params["depth_single_blocks"].get<int>());
  EXPECT_EQ(cfg.guidance_embed, params["guidance_embed"].get<bool>());
  flux::Model model(cfg, w);
  Ctx c;
  std::map<std::string, Tensor> seen;
  Tensor guidance = g.has("guidance") ? g.at("guidance") : Tensor();
  Tensor out = model.forward(c, g.at("img"), g.at("img_ids"), g.at("txt"), g.at("txt_ids"), g.at("timesteps"), g.at("y"),
                             guidance.defined() ? &guidance : nullptr,
                             [&](const std::string& name, const Tensor& t) { seen[name] = t; });
  expect_matches(out, g.at("output"), k.tol, k.tol, std::string(k.io) + " output");
  int compared = 0;
  for (const auto& [name, want] : g.tensors) {
    if (name.rfind("inter.", 0) != 0) continue;
    std::string key = name.substr(6);
    auto it = seen.find(key);
    ASSERT_NE(it, seen.end()) << "no intermediate named '" << key << "'";
    double tol = key == "pe" ? 1e-6 : k.tol;
    expect_matches(it->second, want, tol, tol, std::string(k.io) + " " + name);
    ++compared;
  }
  EXPECT_GE(compared, 15);
}

TEST(Flux, SchnellForwardAndIntermediatesMatchTheReference) {
  run_case({"transformer.safetensors", "transformer_io.safetensors", "transformer_params.json", 1e-4});
}

TEST(Flux, DevForwardWithGuidanceMatchesTheReference) {
  run_case({"transformer_dev.safetensors", "transformer_dev_io.safetensors", "transformer_dev_params.json", 5e-4});
}

TEST(Flux, BatchOfTwoGivesEachSampleItsOwnResult) {
  io::WeightSet w = io::load_weights(testdata("flux-tiny/transformer_dev.safetensors"));
  io::WeightSet g = io::load_weights(testdata("flux-tiny/transformer_dev_io.safetensors"));
  nlohmann::json params = read_json(testdata("flux-tiny/transformer_dev_params.json"));
  flux::Model model(flux::Config::from_weights(w, &params), w);
  Ctx c;
  auto twice = [&](const char* n) { return ops::concat(c, {g.at(n), g.at(n)}, 0); };
  // The second sample gets another timestep: its result must differ, the first must not change.
  Tensor t = Tensor::from_floats({2}, {g.at("timesteps").to_floats()[0], 0.3f});
  Tensor guidance = twice("guidance");
  Tensor out = model.forward(c, twice("img"), twice("img_ids"), twice("txt"), twice("txt_ids"), t, twice("y"), &guidance);
  ASSERT_EQ(out.shape(), (Shape{2, 16, 64}));
  expect_matches(out.slice(0, 0, 1), g.at("output"), 5e-4, 5e-4, "batch sample 0");
  std::vector<float> second = out.slice(0, 1, 1).to_floats(), first = g.at("output").to_floats();
  EXPECT_NE(second, first);
}

TEST(Flux, ScaledFp8WeightsAsComfyUiStoresThem) {
  io::WeightSet w = io::load_weights(testdata("flux-tiny/transformer.safetensors"));
  io::WeightSet g = io::load_weights(testdata("flux-tiny/transformer_io.safetensors"));
  nlohmann::json params = read_json(testdata("flux-tiny/transformer_params.json"));
  io::WeightSet fp8;
  for (const auto& [n, t] : w.tensors) {
    if (t.dim() != 2) {
      fp8.tensors.emplace(n, t);
      continue;
    }
    std::vector<float> f = t.to_floats();
    float amax = 0;
    for (float v : f) amax = std::max(amax, std::fabs(v));
    float s = amax / 448.0f;
    for (float& v : f) v /= s;
    Tensor q = Tensor::zeros(t.shape(), DType::F8_E4M3);
    from_f32(DType::F8_E4M3, f.data(), q.data<uint8_t>(), t.numel());
    fp8.tensors.emplace(n, q);
    fp8.tensors.emplace(n.substr(0, n.size() - 7) + ".scale_weight", Tensor::from_floats({}, {s}));
  }
  flux::Model model(flux::Config::from_weights(fp8, &params), fp8);
  Ctx c;
  Tensor out = model.forward(c, g.at("img"), g.at("img_ids"), g.at("txt"), g.at("txt_ids"), g.at("timesteps"), g.at("y"), nullptr);
  // E4M3 keeps 3 mantissa bits (steps of 6-12%); the output stays within a few tenths of the
  // reference, which it could not if the scales were ignored (weights up to 448x too large).
  expect_matches(out, g.at("output"), 0.3, 0.2, "scaled fp8");
}

TEST(Flux, ConfigErrorsNameWhatIsMissing) {
  io::WeightSet w = io::load_weights(testdata("flux-tiny/transformer.safetensors"));
  try {
    flux::Config::from_weights(w, nullptr);   // head width 16: axes cannot be guessed
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("--config"), std::string::npos) << e.what();
  }
  nlohmann::json bad = {{"axes_dim", {4, 6, 8}}};
  EXPECT_THROW(flux::Config::from_weights(w, &bad), UserError);
  io::WeightSet missing = w;
  missing.tensors.erase("double_blocks.1.img_attn.proj.bias");
  nlohmann::json params = read_json(testdata("flux-tiny/transformer_params.json"));
  try {
    flux::Model m(flux::Config::from_weights(missing, &params), missing);
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("double_blocks.1.img_attn.proj.bias"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fluxpipe::testing
