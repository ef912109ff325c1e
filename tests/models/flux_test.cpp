// The Flux transformer against BFL's reference on the tiny random-weight models in
// ../shared/testdata/flux-tiny: the forward output and every named intermediate.
#include <gtest/gtest.h>

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
