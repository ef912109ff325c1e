// `fluxpipe run ...` as a user runs it: a separate process reading the reference inputs and
// writing named tensors that match the reference outputs; the bf16 fast path stays close.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "golden.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

int run(const std::string& args) {
  std::string cmd = std::string(FLUXPIPE_BIN) + " run " + args + " > /dev/null 2>&1";
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string tiny(const std::string& f) { return testdata("flux-tiny/" + f); }

TEST(RunCommand, TransformerVaeSampleAndRandnMatchTheReference) {
  TempDir dir;
  std::string out = dir.path() + "/out.safetensors";
  ASSERT_EQ(run("transformer --weights " + tiny("transformer.safetensors") + " --inputs " + tiny("transformer_io.safetensors") +
                " --config " + tiny("transformer_params.json") + " --output " + out), 0);
  expect_matches(io::load_weights(out).at("output"), io::load_weights(tiny("transformer_io.safetensors")).at("output"), 1e-4, 1e-4, "run transformer");

  ASSERT_EQ(run("transformer --weights " + tiny("transformer_dev.safetensors") + " --inputs " + tiny("transformer_dev_io.safetensors") +
                " --config " + tiny("transformer_dev_params.json") + " --output " + out), 0);
  expect_matches(io::load_weights(out).at("output"), io::load_weights(tiny("transformer_dev_io.safetensors")).at("output"), 5e-4, 5e-4, "run transformer (dev)");

  for (const char* which : {"decode", "encode"}) {
    ASSERT_EQ(run(std::string("vae-") + which + " --weights " + tiny("ae.safetensors") + " --inputs " + tiny("ae_io.safetensors") +
                  " --config " + tiny("ae_params.json") + " --output " + out), 0);
    std::string name = std::string(which) + ".out";
    expect_matches(io::load_weights(out).at(name), io::load_weights(tiny("ae_io.safetensors")).at(name), 1e-4, 1e-4, name);
  }

  ASSERT_EQ(run("sample --weights " + tiny("transformer.safetensors") + " --ae " + tiny("ae.safetensors") + " --ae-config " +
                tiny("ae_params.json") + " --config " + tiny("transformer_params.json") + " --inputs " +
                tiny("sample_io.safetensors") + " --steps 4 --output " + out), 0);
  io::WeightSet got = io::load_weights(out), want = io::load_weights(tiny("sample_io.safetensors"));
  for (const char* n : {"latents_packed_final", "latents_unpacked", "image"}) expect_matches(got.at(n), want.at(n), 1e-4, 1e-4, n);
  expect_matches(got.at("image_u8"), want.at("image_u8"), 1.0, 0, "image_u8");

  ASSERT_EQ(run("randn --seed 42 --shape 1,16,8,8 --dtype f32 --output " + out), 0);
  expect_matches(io::load_weights(out).at("noise"), want.at("noise"), 1e-6, 1e-6, "randn seed 42");
}

TEST(RunCommand, Bf16FastPathStaysCloseToTheReference) {
  TempDir dir;
  std::string out = dir.path() + "/out.safetensors";
  ASSERT_EQ(run("transformer --compute bf16 --weights " + tiny("transformer.safetensors") + " --inputs " +
                tiny("transformer_io.safetensors") + " --config " + tiny("transformer_params.json") + " --output " + out), 0);
  // bf16 keeps 8 bits of mantissa: a few parts in a thousand per product, accumulated in F32.
  expect_matches(io::load_weights(out).at("output"), io::load_weights(tiny("transformer_io.safetensors")).at("output"), 0.05, 0.05, "bf16 transformer");
}

TEST(RunCommand, MistakesAreNamed) {
  TempDir dir;
  std::string out = dir.path() + "/out.safetensors";
  EXPECT_EQ(run("transformer --weights " + tiny("transformer.safetensors") + " --inputs " + tiny("transformer_io.safetensors") + " --output " + out), 2);
  EXPECT_EQ(run("transformer --weights " + tiny("transformer.safetensors") + " --inputs " + tiny("ae_io.safetensors") +
                " --config " + tiny("transformer_params.json") + " --output " + out), 2);
  EXPECT_EQ(run("warp-drive --weights x --inputs y --output " + out), 2);
  EXPECT_EQ(run("randn --seed 1 --output " + out), 2);
  EXPECT_EQ(run("vae-decode --weights /nonexistent.safetensors --inputs " + tiny("ae_io.safetensors") + " --output " + out), 2);
}

}  // namespace
}  // namespace fluxpipe::testing
