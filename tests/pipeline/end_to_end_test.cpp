// Text to image end to end with a random-weight test model (`fluxpipe make-test-model`):
// through the CLI and through the real `fluxpipe serve` over HTTP. The test model draws noise,
// so these tests check the plumbing — sizes, seeds, determinism, metadata, errors — not pictures.
#include <gtest/gtest.h>
#include <png.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gpu.h"
#include "io/weights.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

int sh(const std::string& cmd) {
  int status = std::system((cmd + " > /dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string capture(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

std::string testdata_dir() { return std::string(FLUXPIPE_SHARED_DIR) + "/testdata"; }

struct PngInfo {
  int width = 0, height = 0;
  std::string parameters;
};

PngInfo read_png(const std::string& bytes) {
  PngInfo info;
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (png_image_begin_read_from_memory(&img, bytes.data(), bytes.size())) {
    info.width = static_cast<int>(img.width);
    info.height = static_cast<int>(img.height);
    png_image_free(&img);
  }
  size_t at = bytes.find("parameters");
  if (at != std::string::npos) info.parameters = bytes.substr(at + 11, 400);
  return info;
}

class EndToEnd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir;
    ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " make-test-model " + model_->path()), 0);
  }
  static void TearDownTestSuite() { delete model_; }
  static TempDir* model_;
};
TempDir* EndToEnd::model_ = nullptr;

TEST_F(EndToEnd, GenerateWritesDeterministicPngsWithParameters) {
  TempDir out;
  std::string base = std::string(FLUXPIPE_BIN) + " generate 'a photo of a cat' --model " + model_->path() +
                     " --width 96 --height 64 --steps 2 --samples 2";
  ASSERT_EQ(sh(base + " --seed 11 -o " + out.path() + "/a.png"), 0);
  ASSERT_EQ(sh(base + " --seed 11 -o " + out.path() + "/b.png"), 0);
  ASSERT_EQ(sh(base + " --seed 12 -o " + out.path() + "/c.png"), 0);
  std::string a = slurp(out.path() + "/a.png"), b = slurp(out.path() + "/b.png"), c = slurp(out.path() + "/c.png");
  EXPECT_EQ(a, b) << "same seed and parameters must give byte-identical PNGs";
  EXPECT_NE(a, c);
  EXPECT_EQ(slurp(out.path() + "/a-1.png"), slurp(out.path() + "/c.png")) << "image 1 of seed 11 uses seed 12";
  PngInfo info = read_png(a);
  EXPECT_EQ(info.width, 96);
  EXPECT_EQ(info.height, 64);
  EXPECT_NE(info.parameters.find("a photo of a cat"), std::string::npos) << info.parameters;
  EXPECT_NE(info.parameters.find("Seed: 11"), std::string::npos) << info.parameters;
  EXPECT_NE(info.parameters.find("test model"), std::string::npos) << info.parameters;
  // JPEG (parameters in a COM marker) and WebP by file name.
  ASSERT_EQ(sh(base + " --seed 11 --samples 1 -o " + out.path() + "/a.jpg"), 0);
  ASSERT_EQ(sh(base + " --seed 11 --samples 1 -o " + out.path() + "/a.webp"), 0);
  std::string jpg = slurp(out.path() + "/a.jpg"), webp = slurp(out.path() + "/a.webp");
  EXPECT_EQ(jpg.substr(0, 3), "\xff\xd8\xff");
  EXPECT_NE(jpg.find("Seed: 11"), std::string::npos);
  EXPECT_EQ(webp.substr(0, 4), "RIFF");
  EXPECT_EQ(webp.substr(8, 4), "WEBP");
  // A negative prompt runs true CFG: a different image.
  ASSERT_EQ(sh(base + " --seed 11 --negative-prompt blurry -o " + out.path() + "/n.png"), 0);
  EXPECT_NE(slurp(out.path() + "/n.png"), a);
}

TEST_F(EndToEnd, GenerateFollowsTheMemoryBudgetAndSaysWhatItDid) {
  TempDir out;
  std::string base = std::string(FLUXPIPE_BIN) + " generate 'a boat' --model " + model_->path() +
                     " --width 64 --height 64 --steps 1 --seed 3";
  std::string roomy = capture(base + " -o " + out.path() + "/a.png");
  EXPECT_NE(roomy.find("memory plan: kept every part resident"), std::string::npos) << roomy;
  EXPECT_NE(roomy.find("peak memory"), std::string::npos) << roomy;
  // Forced tiles give the same image here (the 64-pixel image is one tile).
  ASSERT_EQ(sh(base + " --vae-tiling on -o " + out.path() + "/b.png"), 0);
  EXPECT_EQ(slurp(out.path() + "/a.png"), slurp(out.path() + "/b.png"));
  // A budget below what the process holds refuses the job before any work, and says why.
  // (Which parts a tight budget releases is tested on the engine, memory_plan_test.cpp.)
  EXPECT_NE(sh(base + " --memory-budget 1K -o " + out.path() + "/c.png"), 0);
  std::string refused = capture(base + " --memory-budget 1K -o " + out.path() + "/c.png");
  EXPECT_NE(refused.find("of working memory while denoising"), std::string::npos) << refused;
  EXPECT_NE(refused.find("no image size fits"), std::string::npos) << refused;
  EXPECT_NE(sh(base + " --memory-budget lots -o " + out.path() + "/c.png"), 0);
  EXPECT_NE(capture(base + " --vae-tiling sometimes -o " + out.path() + "/c.png").find("--vae-tiling"), std::string::npos);
}

TEST_F(EndToEnd, QuantizedTransformerStillMatchesTheReferenceClosely) {
  TempDir out;
  std::string tiny = testdata_dir() + "/flux-tiny/";
  std::vector<float> want = io::load_weights(tiny + "transformer_io.safetensors").at("output").to_floats();
  // The transformer's output with `env` set, and its relative RMS error against the reference.
  auto run_quantized = [&](const std::string& env, const std::string& gguf, std::vector<float>* got) {
    std::string o = out.path() + "/o.safetensors";
    std::string cmd = env + " " + FLUXPIPE_BIN + " run transformer --compute bf16 --weights " + gguf + " --config " + tiny +
                      "transformer_params.json --inputs " + tiny + "transformer_io.safetensors --output " + o;
    EXPECT_EQ(sh(cmd), 0) << cmd;
    *got = io::load_weights(o).at("output").to_floats();
    double err = 0, ref = 0;
    for (size_t i = 0; i < got->size(); ++i) {
      err += ((*got)[i] - want[i]) * ((*got)[i] - want[i]);
      ref += want[i] * want[i];
    }
    return std::sqrt(err / ref);
  };
  // Under FLUXPIPE_ISA=avx2 Q8_0 and Q4_0 products run in integers where the CPU has AVX-VNNI.
  const std::string devices = capture("FLUXPIPE_ISA=avx2 " + std::string(FLUXPIPE_BIN) + " devices");
  auto integer = [&](const std::string& type) {
    size_t at = devices.find(type + " weights:");
    // "integer products (avx-vnni; ...)" where they run; a line saying they are off names them too.
    return at != std::string::npos && devices.substr(at, devices.find('\n', at) - at).find("integer products (") != std::string::npos;
  };
  for (const char* type : {"q8_0", "q4_0", "q4_k"}) {
    std::string gguf = out.path() + "/t-" + type + ".gguf";
    ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " quantize " + tiny + "transformer.safetensors " + gguf + " --type " + type), 0);
    // Relative RMS error of the whole forward pass: quantization noise, not a broken model.
    // (Measured here: Q8_0 0.011, 0.015 in integers; Q4_0, one scale per 32 weights and no
    // offset, 0.158 either way; Q4_K 0.037.)
    const std::string t = type;
    const double limit = t == "q8_0" ? 0.02 : t == "q4_0" ? 0.2 : 0.15;
    std::vector<float> best, avx2, avx2_widened;
    double e = run_quantized("", gguf, &best);
    EXPECT_LT(e, limit) << type;
    EXPECT_GT(e, 0.0) << type;
    const double e_avx2 = run_quantized("FLUXPIPE_ISA=avx2", gguf, &avx2);
    const double e_widened = run_quantized("FLUXPIPE_ISA=avx2 FLUXPIPE_INT8=0", gguf, &avx2_widened);
    EXPECT_LT(e_avx2, limit) << type << " at avx2";
    EXPECT_LT(e_widened, limit) << type << " at avx2, widened";
    std::printf("%s: relative RMS error %.4f; at avx2 %.4f, widened %.4f\n", type, e, e_avx2, e_widened);
    if (t == "q4_k") {
      EXPECT_EQ(avx2, avx2_widened) << "q4_k has no integer path";
    } else if (integer(t)) {
      EXPECT_NE(avx2, avx2_widened) << type << ": the integer path did not run";
    }
  }
  // A test model whose transformer is a GGUF still generates.
  TempDir mixed;
  for (const char* f : {"ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors", "fluxpipe.json"}) {
    std::filesystem::copy_file(model_->path() + "/" + f, mixed.path() + "/" + f);
  }
  ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " quantize " + model_->path() + "/flux1-test.safetensors " + mixed.path() + "/flux1-test-Q8_0.gguf --type q8_0"), 0);
  ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " generate cat --model " + mixed.path() + " --width 64 --height 64 --steps 1 -o " + out.path() + "/g.png"), 0);
  EXPECT_EQ(read_png(slurp(out.path() + "/g.png")).width, 64);
}

TEST_F(EndToEnd, DevicesNamesTheCpuTheLevelInForceAndItsKernels) {
  std::string all = capture(std::string(FLUXPIPE_BIN) + " devices");
  EXPECT_NE(all.find("cpu\n"), std::string::npos) << all;
  EXPECT_NE(all.find("instructions:"), std::string::npos) << all;
  EXPECT_NE(all.find("q8_0 weights:"), std::string::npos) << all;
  EXPECT_NE(all.find("q4_0 weights:"), std::string::npos) << all;
  std::string avx2 = capture("FLUXPIPE_ISA=avx2 " + std::string(FLUXPIPE_BIN) + " devices");
  EXPECT_NE(avx2.find("avx2 in force"), std::string::npos) << avx2;
  EXPECT_NE(avx2.find("bf16 weights:      avx2 kernels"), std::string::npos) << avx2;
  EXPECT_NE(avx2.find("3x3 convolutions:  Winograd F(4x4, 3x3) (a quarter"), std::string::npos) << avx2;
  std::string off = capture("FLUXPIPE_WINOGRAD=0 " + std::string(FLUXPIPE_BIN) + " devices");
  EXPECT_NE(off.find("3x3 convolutions:  direct"), std::string::npos) << off;
  EXPECT_NE(sh("FLUXPIPE_ISA=avx1024 " + std::string(FLUXPIPE_BIN) + " devices"), 0);
  EXPECT_NE(capture("FLUXPIPE_ISA=avx1024 " + std::string(FLUXPIPE_BIN) + " devices").find("'avx1024' is not one of"), std::string::npos);
  EXPECT_NE(sh(std::string(FLUXPIPE_BIN) + " devices extra"), 0);
  // A bad switch fails the start of a run, naming the variable, before any work.
  TempDir out;
  std::string bad = capture("FLUXPIPE_INT8=sometimes " + std::string(FLUXPIPE_BIN) + " generate cat --model " + model_->path() +
                            " --width 64 --height 64 --steps 1 -o " + out.path() + "/x.png");
  EXPECT_NE(bad.find("FLUXPIPE_INT8='sometimes' is not 0, 1 or avx2"), std::string::npos) << bad;
  EXPECT_FALSE(std::filesystem::exists(out.path() + "/x.png"));
  bad = capture("FLUXPIPE_WINOGRAD=maybe " + std::string(FLUXPIPE_BIN) + " generate cat --model " + model_->path() +
                " --width 64 --height 64 --steps 1 -o " + out.path() + "/x.png");
  EXPECT_NE(bad.find("FLUXPIPE_WINOGRAD must be 0 or 1, not 'maybe'"), std::string::npos) << bad;
  EXPECT_EQ(bad.find("step"), std::string::npos) << "denoised before failing: " << bad;
  EXPECT_FALSE(std::filesystem::exists(out.path() + "/x.png"));
}

TEST_F(EndToEnd, EveryTestModelLayoutGeneratesTheSameImage) {
  // The same random weights (seed 1) written in each layout must give the same image, except GGUF
  // whose Q8_0 transformer changes the numbers a little.
  TempDir out;
  std::string reference;
  for (const char* layout : {"bfl", "diffusers", "comfyui", "gguf"}) {
    TempDir m;
    ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " make-test-model " + m.path() + " --layout " + layout), 0) << layout;
    std::string png = out.path() + "/" + layout + ".png";
    ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " generate cat --model " + m.path() + " --width 64 --height 64 --steps 2 --seed 4 -o " + png), 0) << layout;
    std::string bytes = slurp(png);
    EXPECT_EQ(read_png(bytes).width, 64) << layout;
    if (std::string(layout) == "bfl") {
      reference = bytes;
    } else if (std::string(layout) == "comfyui" || std::string(layout) == "diffusers") {
      EXPECT_EQ(bytes, reference) << layout << " layout";
    } else {
      EXPECT_NE(bytes, reference) << "gguf (quantized) layout";
    }
  }
}

TEST_F(EndToEnd, MissingPartsAreNamed) {
  TempDir partial;
  for (const char* f : {"flux1-test.safetensors", "ae.safetensors", "clip_l.safetensors", "fluxpipe.json"}) {
    std::filesystem::copy_file(model_->path() + "/" + f, partial.path() + "/" + f);
  }
  std::string out = capture(std::string(FLUXPIPE_BIN) + " generate x --model " + partial.path() + " -o " + partial.path() + "/x.png");
  EXPECT_NE(out.find("T5"), std::string::npos) << out;
  EXPECT_EQ(out.find("CLIP"), std::string::npos) << out;
}

// `fluxpipe serve` on the test model at 127.0.0.1:port (its output to /dev/null), ready.
pid_t start_serve(const std::string& data, const std::string& model, int port, std::vector<std::string> extra = {}) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<std::string> args = {FLUXPIPE_BIN, "serve", "--data", data, "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--model", model, "--sync-wait", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execv(FLUXPIPE_BIN, argv.data());
    _exit(127);
  }
  httplib::Client c("127.0.0.1", port);
  for (int i = 0; i < 400; ++i) {
    auto r = c.Get("/readyz");
    if (r && r->status == 200) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ADD_FAILURE() << "server did not become ready";
  return pid;
}

int stop_serve(pid_t pid) {
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_F(EndToEnd, ServeRefusesAJobTheMemoryBudgetCannotHold) {
  TempDir data;
  std::string key = capture(std::string(FLUXPIPE_BIN) + " keys add --data " + data.path());
  key = key.substr(key.rfind("fpk_"), 52);
  int port = free_port();
  pid_t pid = start_serve(data.path(), model_->path(), port, {"--memory-budget", "1K"});
  httplib::Client c("127.0.0.1", port);
  json body = {{"prompt", "a toucan"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}};
  auto res = c.Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_NE(res->body.find("does not fit this server's memory"), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("no image size fits"), std::string::npos) << res->body;
  EXPECT_EQ(stop_serve(pid), 0);
}

TEST_F(EndToEnd, ServeWithTheModelAnswersTheV3Flow) {
  TempDir data;
  std::string key = capture(std::string(FLUXPIPE_BIN) + " keys add --data " + data.path());
  key = key.substr(key.rfind("fpk_"), 52);
  int port = free_port();
  pid_t pid = start_serve(data.path(), model_->path(), port);
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30, 0);
  auto poll = [&](const std::string& id) {
    json j;
    for (int i = 0; i < 400; ++i) {
      auto r = c.Get("/generate/v3/status/" + id, {{"API-Key", key}});
      j = json::parse(r->body);
      if (j["status"] != "PENDING") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return j;
  };
  json body = {{"prompt", "a toucan"}, {"width", 64}, {"height", 80}, {"samples", 2}, {"num_inference_steps", 2}, {"seed", 3}};
  auto res = c.Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json done = poll(json::parse(res->body)["id"]);
  ASSERT_EQ(done["status"], "SUCCESS") << done.dump();
  ASSERT_EQ(done["download_urls"].size(), 2u);
  std::string url = done["download_urls"][0];
  auto img = c.Get(url.substr(url.find("/v3/images/")));
  ASSERT_EQ(img->status, 200);
  PngInfo info = read_png(img->body);
  EXPECT_EQ(info.width, 64);
  EXPECT_EQ(info.height, 80);
  EXPECT_NE(info.parameters.find("test model"), std::string::npos);
  // A prompt beyond the encoders' limits is truncated, and the answer says so.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "word ";
  body["prompt"] = long_prompt;
  body["samples"] = 1;
  res = c.Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  json warned = poll(json::parse(res->body)["id"]);
  EXPECT_EQ(warned["status"], "SUCCESS");
  EXPECT_NE(warned.value("warnings", json::array()).dump().find("truncated"), std::string::npos) << warned.dump();
  EXPECT_EQ(stop_serve(pid), 0);
}

// ---- on a GPU (skipped without one) ----

// RGB bytes of a PNG (empty when it does not decode).
std::vector<uint8_t> png_rgb(const std::string& bytes) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, bytes.data(), bytes.size())) return {};
  img.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> rgb(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, rgb.data(), 0, nullptr)) rgb.clear();
  return rgb;
}

double psnr(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double se = 0;
  for (size_t i = 0; i < a.size(); ++i) se += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  double mse = se / static_cast<double>(a.size());
  return mse == 0 ? INFINITY : 10.0 * std::log10(255.0 * 255.0 / mse);
}

TEST_F(EndToEnd, OnTheGpuEveryLayoutIsDeterministicAndCloseToTheCpuImage) {
  FLUXPIPE_NEED_GPU();
  TempDir out;
  std::string bfl_gpu;
  for (const char* layout : {"bfl", "diffusers", "comfyui", "gguf"}) {
    TempDir m;
    ASSERT_EQ(sh(std::string(FLUXPIPE_BIN) + " make-test-model " + m.path() + " --layout " + layout), 0) << layout;
    std::string base = std::string(FLUXPIPE_BIN) + " generate cat --model " + m.path() + " --width 96 --height 64 --steps 2 --seed 4";
    std::string gpu = out.path() + "/" + layout + "-gpu.png", again = out.path() + "/" + layout + "-again.png",
                cpu = out.path() + "/" + layout + "-cpu.png";
    std::string said = capture(base + " --device cuda -o " + gpu);
    EXPECT_NE(said.find("device: cuda:0"), std::string::npos) << said;
    ASSERT_EQ(sh(base + " --device cuda -o " + again), 0) << layout;
    ASSERT_EQ(sh(base + " --device cpu -o " + cpu), 0) << layout;
    EXPECT_EQ(slurp(gpu), slurp(again)) << layout << ": the same seed on the GPU must give a byte-identical image";
    std::vector<uint8_t> g = png_rgb(slurp(gpu)), c = png_rgb(slurp(cpu));
    ASSERT_EQ(g.size(), 96u * 64u * 3u) << layout;
    ASSERT_EQ(g.size(), c.size()) << layout;
    double db = psnr(g, c);
    std::printf("%s: GPU vs CPU image PSNR %.1f dB\n", layout, db);
    // Both compute in bf16 with F32 accumulation, in another order: the images differ in a few
    // low bits. (Bound set before the first GPU run; adjust to what the run measures.)
    EXPECT_GE(db, 30.0) << layout;
    if (std::string(layout) == "bfl") bfl_gpu = slurp(gpu);
    if (std::string(layout) == "diffusers" || std::string(layout) == "comfyui") EXPECT_EQ(slurp(gpu), bfl_gpu) << layout;
  }
}

TEST_F(EndToEnd, OnTheGpuServeAnswersWithAPngCancelsAndRefusesWhatDoesNotFit) {
  FLUXPIPE_NEED_GPU();
  TempDir data;
  std::string key = capture(std::string(FLUXPIPE_BIN) + " keys add --data " + data.path());
  key = key.substr(key.rfind("fpk_"), 52);
  int port = free_port();
  pid_t pid = start_serve(data.path(), model_->path(), port, {"--device", "cuda"});
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60, 0);
  auto status = [&](const std::string& id) { return json::parse(c.Get("/generate/v3/status/" + id, {{"API-Key", key}})->body); };
  auto poll = [&](const std::string& id) {
    json j;
    for (int i = 0; i < 2400; ++i) {
      j = status(id);
      if (j["status"] != "PENDING") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return j;
  };
  json body = {{"prompt", "a toucan"}, {"width", 64}, {"height", 80}, {"samples", 1}, {"num_inference_steps", 2}, {"seed", 3}};
  auto res = c.Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json done = poll(json::parse(res->body)["id"]);
  ASSERT_EQ(done["status"], "SUCCESS") << done.dump();
  std::string url = done["download_urls"][0];
  auto img = c.Get(url.substr(url.find("/v3/images/")));
  ASSERT_EQ(img->status, 200);
  EXPECT_EQ(read_png(img->body).width, 64);
  // The largest job the API takes, cancelled once it is running: it stops at the next step.
  json big = {{"prompt", "a toucan"}, {"width", 1536}, {"height", 1536}, {"samples", 4}, {"num_inference_steps", 50}, {"seed", 3}};
  res = c.Post("/generate/v3", {{"API-Key", key}}, big.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  std::string id = json::parse(res->body)["id"];
  json running;
  for (int i = 0; i < 2400; ++i) {
    running = status(id);
    if (running.value("state", "") == "running" && running.contains("progress") && running["progress"]["done"].get<int>() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(running.value("state", ""), "running") << running.dump();
  ASSERT_EQ(c.Delete("/generate/v3/status/" + id, {{"API-Key", key}})->status, 200);
  json ended = poll(id);
  EXPECT_EQ(ended.value("state", ""), "cancelled") << ended.dump();
  EXPECT_EQ(stop_serve(pid), 0);
  // A GPU budget that cannot hold the job: refused at submission, saying why.
  TempDir data2;
  key = capture(std::string(FLUXPIPE_BIN) + " keys add --data " + data2.path());
  key = key.substr(key.rfind("fpk_"), 52);
  port = free_port();
  pid = start_serve(data2.path(), model_->path(), port, {"--device", "cuda", "--vram-budget", "1K"});
  httplib::Client c2("127.0.0.1", port);
  res = c2.Post("/generate/v3", {{"API-Key", key}}, body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_NE(res->body.find("of GPU memory"), std::string::npos) << res->body;
  EXPECT_EQ(stop_serve(pid), 0);
}

TEST_F(EndToEnd, DeviceCudaWithoutAGpuFailsClearlyAndWritesNothing) {
  std::string why = gpu_absent_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA GPU is present: this checks the machines without one";
  TempDir out;
  std::string cmd = std::string(FLUXPIPE_BIN) + " generate cat --model " + model_->path() + " --width 64 --height 64 --steps 1 --device cuda -o " +
                    out.path() + "/x.png";
  EXPECT_NE(sh(cmd), 0);
  std::string said = capture(cmd);
  EXPECT_NE(said.find("[device] cuda:0: " + why), std::string::npos) << said;
  EXPECT_FALSE(std::filesystem::exists(out.path() + "/x.png"));
  EXPECT_NE(capture(std::string(FLUXPIPE_BIN) + " generate cat --model " + model_->path() + " --device tpu -o " + out.path() + "/x.png")
                .find("'tpu' is not auto, cpu, cuda or cuda:N"),
            std::string::npos);
  // auto falls back to the CPU and says why.
  std::string fallback = capture(std::string(FLUXPIPE_BIN) + " generate cat --model " + model_->path() +
                                 " --width 64 --height 64 --steps 1 -o " + out.path() + "/y.png");
  EXPECT_NE(fallback.find("device: cpu (" + why + ")"), std::string::npos) << fallback;
  std::string listed = capture(std::string(FLUXPIPE_BIN) + " devices");
  EXPECT_NE(listed.find(why), std::string::npos) << listed;
}

}  // namespace
}  // namespace fluxpipe::testing
