// CLIP text tower and T5 encoder against Hugging Face transformers on the tiny random models
// in ../shared/testdata/text-tiny (tolerances from its README: CLIP 1e-5, T5 5e-5).
#include <gtest/gtest.h>

#include "golden.h"
#include "core/error.h"
#include "models/text/encoders.h"

namespace fluxpipe::testing {
namespace {

std::string tiny(const std::string& f) { return testdata("text-tiny/" + f); }

TEST(TextEncoders, ClipLastHiddenStateAndPooledOutput) {
  io::WeightSet w = io::load_weights(tiny("clip.safetensors"));
  io::WeightSet g = io::load_weights(tiny("clip_io.safetensors"));
  nlohmann::json cfg = read_json(tiny("clip_config.json"));
  text::ClipTextModel clip(text::ClipConfig::from_weights(w, &cfg), w);
  EXPECT_EQ(clip.config().heads, 4);
  Ctx c;
  text::ClipOutput out = clip.forward(c, g.at("input_ids"));
  expect_matches(out.last_hidden_state, g.at("last_hidden_state"), 1e-5, 0, "clip last_hidden_state");
  expect_matches(out.pooler_output, g.at("pooler_output"), 1e-5, 0, "clip pooler_output");
  expect_matches(out.pooler_output, g.at("pooler_output_f64"), 1e-5, 0, "clip pooler_output vs float64");
}

TEST(TextEncoders, T5UnmaskedAsFluxAndMasked) {
  io::WeightSet w = io::load_weights(tiny("t5.safetensors"));
  io::WeightSet g = io::load_weights(tiny("t5_io.safetensors"));
  nlohmann::json cfg = read_json(tiny("t5_config.json"));
  text::T5Encoder t5(text::T5Config::from_weights(w, &cfg), w);
  Ctx c;
  expect_matches(t5.forward(c, g.at("input_ids")), g.at("last_hidden_state_unmasked"), 5e-5, 0, "t5 unmasked");
  Tensor mask = g.at("attention_mask");
  expect_matches(t5.forward(c, g.at("input_ids"), &mask), g.at("last_hidden_state_masked"), 5e-5, 0, "t5 masked");
}

TEST(TextEncoders, T5RelativePositionBucketsAreExact) {
  io::WeightSet g = io::load_weights(tiny("t5_io.safetensors"));
  const Tensor& want = g.at("relative_position_bucket");
  std::vector<float> w = want.to_floats();
  int64_t L = want.size(0);
  int wrong = 0;
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < L; ++j) wrong += ops::t5_bucket(i, j, 32, 128) != static_cast<int>(w[static_cast<size_t>(i * L + j)]);
  EXPECT_EQ(wrong, 0);
}

TEST(TextEncoders, OutOfVocabularyIdsAreNamed) {
  io::WeightSet w = io::load_weights(tiny("t5.safetensors"));
  nlohmann::json cfg = read_json(tiny("t5_config.json"));
  text::T5Encoder t5(text::T5Config::from_weights(w, &cfg), w);
  Ctx c;
  try {
    t5.forward(c, Tensor::from_floats({1, 2}, {5, 99999}));
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("99999"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fluxpipe::testing
