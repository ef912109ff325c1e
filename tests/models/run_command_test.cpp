// `fluxpipe run ...` as a user runs it: a separate process reading the reference inputs and
// writing named tensors that match the reference outputs; the bf16 fast path stays close.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "golden.h"
#include "gpu.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

// The device every `run` of a test goes to (the CPU tests name it: auto would take a GPU).
thread_local std::string g_device = "cpu";

int run(const std::string& args) {
  std::string cmd = std::string(FLUXPIPE_BIN) + " run " + args + " --device " + g_device + " > /dev/null 2>&1";
  int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string tiny(const std::string& f) { return testdata("flux-tiny/" + f); }

void transformer_vae_sample_and_randn() {
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

void clip_and_t5() {
  TempDir dir;
  std::string out = dir.path() + "/out.safetensors";
  std::string t = testdata("text-tiny/");
  ASSERT_EQ(run("clip --weights " + t + "clip.safetensors --config " + t + "clip_config.json --inputs " + t +
                "clip_io.safetensors --output " + out), 0);
  io::WeightSet got = io::load_weights(out), want = io::load_weights(t + "clip_io.safetensors");
  expect_matches(got.at("pooler_output"), want.at("pooler_output"), 1e-5, 0, "run clip pooler_output");
  expect_matches(got.at("last_hidden_state"), want.at("last_hidden_state"), 1e-5, 0, "run clip last_hidden_state");
  ASSERT_EQ(run("t5 --weights " + t + "t5.safetensors --config " + t + "t5_config.json --inputs " + t + "t5_io.safetensors --output " + out), 0);
  io::WeightSet t5w = io::load_weights(t + "t5_io.safetensors");
  expect_matches(io::load_weights(out).at("last_hidden_state"), t5w.at("last_hidden_state_unmasked"), 5e-5, 0, "run t5");
  ASSERT_EQ(run("t5 --mask --weights " + t + "t5.safetensors --config " + t + "t5_config.json --inputs " + t + "t5_io.safetensors --output " + out), 0);
  expect_matches(io::load_weights(out).at("last_hidden_state"), t5w.at("last_hidden_state_masked"), 5e-5, 0, "run t5 --mask");
}

TEST(RunCommand, TransformerVaeSampleAndRandnMatchTheReference) { transformer_vae_sample_and_randn(); }
TEST(RunCommand, ClipAndT5MatchTheReference) { clip_and_t5(); }

// The same golden sets, the same tolerances, computed on the GPU (`--device cuda`).
TEST(RunCommandCuda, TransformerVaeSampleAndRandnMatchTheReferenceOnTheGpu) {
  FLUXPIPE_NEED_GPU();
  g_device = "cuda";
  transformer_vae_sample_and_randn();
  g_device = "cpu";
}
TEST(RunCommandCuda, ClipAndT5MatchTheReferenceOnTheGpu) {
  FLUXPIPE_NEED_GPU();
  g_device = "cuda";
  clip_and_t5();
  g_device = "cpu";
}

TEST(RunCommandCuda, DeviceCudaWithoutAGpuFailsNamingWhyAndWritesNothing) {
  std::string why = gpu_absent_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA GPU is present: this checks the machines without one";
  TempDir dir;
  std::string out = dir.path() + "/out.safetensors", err = dir.path() + "/err.txt";
  std::string cmd = std::string(FLUXPIPE_BIN) + " run transformer --weights " + tiny("transformer.safetensors") + " --inputs " +
                    tiny("transformer_io.safetensors") + " --config " + tiny("transformer_params.json") + " --output " + out +
                    " --device cuda > /dev/null 2> " + err;
  int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  std::ifstream in(err);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("cuda:0"), std::string::npos) << text;
  EXPECT_NE(text.find(why), std::string::npos) << text;
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
}

TEST(RunCommand, TokenizePrintsTheIds) {
  auto capture = [](const std::string& args) {
    std::string cmd = std::string(FLUXPIPE_BIN) + " tokenize " + args + " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    pclose(p);
    return nlohmann::json::parse(out, nullptr, false);
  };
  // The shipped real T5 vocabulary: ids published with T5 (see the tokenizer's README in shared/).
  nlohmann::json t5 = capture("t5 --length 12 'Hello world'");
  EXPECT_EQ(t5, nlohmann::json({8774, 296, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  nlohmann::json golden = read_json(testdata("text-tiny/clip_tokenizer_golden.json"));
  EXPECT_EQ(capture("clip 'a photo of a cat'"), golden[0]["ids"]);
  EXPECT_EQ(capture("t5 --tokenizer " + testdata("text-tiny/t5_spm/spiece.model") + " 'a photo of a cat'"),
            read_json(testdata("text-tiny/t5_tokenizer_golden.json"))[0]["ids"]);
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
