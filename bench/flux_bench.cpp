// FLUX.1 step benchmark (not a test).
//
//   build/bench/flux_bench write --out DIR [--blocks D,S] [--dtype bf16|q8_0|q4_0]
//       writes a random-weight checkpoint of the real FLUX.1 width (hidden 3072, 24 heads of
//       128, context 4096, vec 768) with D double and S single blocks, in BFL names: BF16 as
//       safetensors, Q8_0 / Q4_0 as GGUF (norm scales and biases stay F32 there).
//   build/bench/flux_bench vae [--sizes 256,512] [--compute bf16|f32] [--reps 2] [--profile 1]
//       times the autoencoder decode (real decoder shape, random weights) of a size/8 latent.
//   build/bench/flux_bench t5 [--blocks N,0] [--dtype bf16|q8_0|q4_0] [--reps 2]
//       times T5-XXL-shaped encoding of 256 tokens with N random layers, scaled to 24.
//   build/bench/flux_bench step --weights FILE [--sizes 256,512,1024] [--compute bf16|f32] [--reps 2]
//                               [--device cpu|cuda|cuda:N]
//       times one denoising step (one transformer forward, 256 text tokens) per double block
//       and per single block at each image size, scales to the full 19 + 38 blocks, and prints
//       GFLOP/s against this machine's peak measured in the same run (on a GPU: the rate of an
//       8192³ bf16 product through the backend, timed after the device finished each run).
// FLOP count: every token passes through 12*H^2 = 113.25 M weights per block (x2 for a
// multiply-add), and attention adds 4 * L^2 * H per block, L = image + text tokens.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "profiling_backend.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/winograd.h"
#include "models/flux/flux.h"
#include "models/text/encoders.h"
#include "models/vae/vae.h"
#include "peak.h"
#include "pipeline/device_select.h"

using namespace fluxpipe;

namespace {

constexpr int64_t H = 3072, HEADS = 24, CTX = 4096, VEC = 768, IN = 64, MLP = 4 * H;

struct Rng {
  uint64_t s;
  float uniform() {   // xorshift64*, [-1, 1)
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return static_cast<float>(static_cast<int64_t>((s * 2685821657736338717ULL) >> 11) - (int64_t{1} << 52)) /
           static_cast<float>(int64_t{1} << 52);
  }
};

// Uniform weights with the variance of N(0, 1/fan_in), so activations stay O(1).
Tensor random_tensor(Rng& rng, const Shape& shape, DType dtype, float scale) {
  std::vector<float> v(static_cast<size_t>(numel(shape)));
  for (float& x : v) x = rng.uniform() * scale;
  Tensor t = Tensor::zeros(shape, dtype);
  from_f32(dtype, v.data(), t.data<uint8_t>(), t.numel());
  return t;
}

int write_checkpoint(const std::string& dir, int depth, int single, const std::string& dtype_name) {
  DType wdt = dtype_name == "bf16" ? DType::BF16 : dtype_name == "q8_0" ? DType::Q8_0 : dtype_name == "q4_0" ? DType::Q4_0 : DType::F32;
  if (wdt == DType::F32) {
    std::fprintf(stderr, "--dtype must be bf16, q8_0 or q4_0\n");
    return 2;
  }
  DType small = wdt == DType::BF16 ? DType::BF16 : DType::F32;   // biases and norm scales
  Rng rng{0x9E3779B97F4A7C15ULL};
  io::NamedTensors ts;
  auto lin = [&](const std::string& n, int64_t out, int64_t in) {
    ts.push_back({n + ".weight", random_tensor(rng, {out, in}, wdt, std::sqrt(3.0f / static_cast<float>(in)))});
    ts.push_back({n + ".bias", random_tensor(rng, {out}, small, 0.05f)});
  };
  auto scale = [&](const std::string& n) {
    Tensor t = Tensor::zeros({H / HEADS}, small);
    std::vector<float> ones(static_cast<size_t>(H / HEADS), 1.0f);
    from_f32(small, ones.data(), t.data<uint8_t>(), t.numel());
    ts.push_back({n, t});
  };
  lin("img_in", H, IN);
  lin("txt_in", H, CTX);
  lin("time_in.in_layer", H, 256);
  lin("time_in.out_layer", H, H);
  lin("vector_in.in_layer", H, VEC);
  lin("vector_in.out_layer", H, H);
  for (int i = 0; i < depth; ++i) {
    for (const char* s : {"img", "txt"}) {
      std::string p = "double_blocks." + std::to_string(i) + "." + s;
      lin(p + "_mod.lin", 6 * H, H);
      lin(p + "_attn.qkv", 3 * H, H);
      scale(p + "_attn.norm.query_norm.scale");
      scale(p + "_attn.norm.key_norm.scale");
      lin(p + "_attn.proj", H, H);
      lin(p + "_mlp.0", MLP, H);
      lin(p + "_mlp.2", H, MLP);
    }
  }
  for (int i = 0; i < single; ++i) {
    std::string p = "single_blocks." + std::to_string(i) + ".";
    lin(p + "linear1", 3 * H + MLP, H);
    lin(p + "linear2", H, H + MLP);
    scale(p + "norm.query_norm.scale");
    scale(p + "norm.key_norm.scale");
    lin(p + "modulation.lin", 3 * H, H);
  }
  lin("final_layer.linear", IN, H);
  lin("final_layer.adaLN_modulation.1", 2 * H, H);
  std::string path = dir + "/flux-random-d" + std::to_string(depth) + "s" + std::to_string(single) + "-" + dtype_name +
                     (wdt == DType::BF16 ? ".safetensors" : ".gguf");
  if (wdt == DType::BF16) {
    io::write_safetensors(path, ts, {{"fluxpipe.test_model", "random weights, real FLUX.1 width; not a model"}});
  } else {
    io::write_gguf(path, ts, {{"general.architecture", "flux"}, {"fluxpipe.test_model", "random weights, real FLUX.1 width; not a model"}});
  }
  std::printf("%s\n", path.c_str());
  return 0;
}

// The weights restricted to the first `d` double and `s` single blocks.
io::WeightSet subset(const io::WeightSet& w, int d, int s) {
  io::WeightSet out;
  for (const auto& [name, t] : w.tensors) {
    auto block_index = [&](const std::string& prefix) {
      return std::stoi(name.substr(prefix.size(), name.find('.', prefix.size()) - prefix.size()));
    };
    if (name.rfind("double_blocks.", 0) == 0 && block_index("double_blocks.") >= d) continue;
    if (name.rfind("single_blocks.", 0) == 0 && block_index("single_blocks.") >= s) continue;
    out.tensors.emplace(name, t);
  }
  return out;
}

// The rate of an n³ product through `c` (bf16 weights; its compute), the device finished.
double product_rate(Ctx& c, int64_t n, int reps) {
  Rng rng{3};
  Tensor x = ops::to_device(c, random_tensor(rng, {n, n}, DType::F32, 1.0f));
  Tensor w = ops::to_device(c, random_tensor(rng, {n, n}, DType::BF16, 0.01f));
  double t = bench::seconds_of([&] {
    ops::linear(c, x, w);
    c.backend->synchronize();
  }, reps);
  return 2.0 * static_cast<double>(n) * n * n / t;
}

int step(const std::string& weights, std::vector<int> sizes, const std::string& compute, int reps, bool profile,
         const std::string& device) {
  std::string device_said;
  Backend& backend = resolve_device(device, &device_said);
  const bool gpu = backend.device() != Device::CPU;
  int threads = ThreadPool::global().size();
  ThreadPool::set_global_threads(threads);
  io::WeightSet w = io::load_weights(weights);
  Ctx c;
  c.backend = &backend;
  c.compute = compute == "f32" ? Compute::F32 : Compute::BF16;
  Arena arena;
  if (!gpu) c.arena = &arena;
  double peak = 0;
  if (gpu) {
    peak = product_rate(c, 8192, 5);
    std::printf("weights %s; device %s; compute %s; measured here: an 8192^3 product through the backend %.0f GFLOP/s\n",
                weights.c_str(), device_said.c_str(), compute.c_str(), peak / 1e9);
  } else {
    peak = bench::bf16_peak(threads);
    double fpeak = bench::peak(false, threads);
    std::printf("weights %s; %d threads; compute %s; isa %s (kernels %s); measured peak of this CPU: BF16 %.0f GFLOP/s, F32 FMA %.0f GFLOP/s\n",
                weights.c_str(), threads, compute.c_str(), cpu::isa_name(cpu::active_isa()),
                cpu::gemm_kernel_name(compute == "bf16" ? Compute::BF16 : Compute::F32), peak / 1e9, fpeak / 1e9);
  }
  std::printf("%6s %6s | %10s %10s %12s | %14s | %8s %8s\n", "image", "tokens", "double s", "single s", "d+s s",
              "19+38 est. s", "GFLOP/s", "of peak");
  const int64_t Lt = 256;
  for (int size : sizes) {
    int64_t side = size / 16, Li = side * side, L = Li + Lt;
    Rng rng{42};
    Tensor img = random_tensor(rng, {1, Li, IN}, DType::F32, 1.0f), txt = random_tensor(rng, {1, Lt, CTX}, DType::F32, 1.0f);
    Tensor y = random_tensor(rng, {1, VEC}, DType::F32, 1.0f), t = Tensor::from_floats({1}, {0.75f});
    std::vector<float> idv(static_cast<size_t>(Li * 3), 0.0f);
    for (int64_t i = 0; i < Li; ++i) {
      idv[static_cast<size_t>(i * 3 + 1)] = static_cast<float>(i / side);
      idv[static_cast<size_t>(i * 3 + 2)] = static_cast<float>(i % side);
    }
    Tensor img_ids = Tensor::from_floats({1, Li, 3}, idv), txt_ids = Tensor::zeros({1, Lt, 3}, DType::F32);
    for (Tensor* in : {&img, &txt, &y, &t, &img_ids, &txt_ids}) *in = ops::to_device(c, *in);
    auto time_blocks = [&](int d, int s) {
      io::WeightSet part = weights_on(backend, subset(w, d, s));
      flux::Model m(flux::Config::from_weights(part, nullptr), part);
      return bench::seconds_of([&] {
        m.forward(c, img, img_ids, txt, txt_ids, t, y, nullptr);
        c.backend->synchronize();
        arena.reset();
      }, reps);
    };
    double td = time_blocks(1, 0), ts = time_blocks(0, 1), tb = time_blocks(1, 1);
    double per_block_flop = 2.0 * static_cast<double>(L) * 12.0 * H * H + 4.0 * static_cast<double>(L) * L * H;
    double full = 19 * td + 38 * ts;
    double rate = 57 * per_block_flop / full;
    std::printf("%4dx%-4d %6lld | %10.3f %10.3f %12.3f | %14.1f | %8.0f %7.1f%%\n", size, size, static_cast<long long>(L), td,
                ts, tb, full, rate / 1e9, 100.0 * rate / peak);
    std::fflush(stdout);
    if (profile && !gpu) {
      // One more double + single block through a timing wrapper: where the step's time goes.
      // The model above ran already, so every product's primitive is made: this run is steady.
      io::WeightSet part = subset(w, 1, 1);
      flux::Model m(flux::Config::from_weights(part, nullptr), part);
      bench::ProfilingBackend prof(*c.backend);
      Backend* plain = c.backend;
      c.backend = &prof;
      auto t0 = std::chrono::steady_clock::now();
      m.forward(c, img, img_ids, txt, txt_ids, t, y, nullptr);
      arena.reset();
      double t_prof = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      c.backend = plain;
      std::printf(" where one double + single block's %.3f s go:\n", t_prof);
      prof.print(t_prof);
    }
  }
  return 0;
}

// The real FLUX.1 autoencoder's decoder shape (ch 128, multipliers 1,2,4,4, 2 ResNet blocks
// per level plus one, z 16) with random weights, in memory; times decoding a latent.
int vae_step(const std::vector<int>& sizes, const std::string& compute, int reps, bool profile) {
  int threads = ThreadPool::global().size();
  double peak = bench::bf16_peak(threads);
  Rng rng{7};
  io::WeightSet w;
  auto conv = [&](const std::string& n, int64_t out, int64_t in, int64_t k) {
    w.tensors.emplace(n + ".weight", random_tensor(rng, {out, in, k, k}, DType::F32, std::sqrt(3.0f / static_cast<float>(in * k * k))));
    w.tensors.emplace(n + ".bias", random_tensor(rng, {out}, DType::F32, 0.05f));
  };
  auto norm = [&](const std::string& n, int64_t c) {
    Tensor g = Tensor::zeros({c}, DType::F32);
    for (int64_t i = 0; i < c; ++i) g.data<float>()[i] = 1.0f;
    w.tensors.emplace(n + ".weight", g);
    w.tensors.emplace(n + ".bias", Tensor::zeros({c}, DType::F32));
  };
  auto resnet = [&](const std::string& n, int64_t in, int64_t out) {
    norm(n + ".norm1", in);
    conv(n + ".conv1", out, in, 3);
    norm(n + ".norm2", out);
    conv(n + ".conv2", out, out, 3);
    if (in != out) conv(n + ".nin_shortcut", out, in, 1);
  };
  const int64_t mult[] = {1, 2, 4, 4}, ch = 128;
  int64_t top = ch * 4;
  conv("decoder.conv_in", top, 16, 3);
  resnet("decoder.mid.block_1", top, top);
  norm("decoder.mid.attn_1.norm", top);
  for (const char* p : {"q", "k", "v", "proj_out"}) conv(std::string("decoder.mid.attn_1.") + p, top, top, 1);
  resnet("decoder.mid.block_2", top, top);
  int64_t in = top;
  for (int level = 3; level >= 0; --level) {
    int64_t out = ch * mult[level];
    for (int j = 0; j < 3; ++j) {
      resnet("decoder.up." + std::to_string(level) + ".block." + std::to_string(j), in, out);
      in = out;
    }
    if (level != 0) conv("decoder.up." + std::to_string(level) + ".upsample.conv", out, out, 3);
  }
  norm("decoder.norm_out", ch);
  conv("decoder.conv_out", 3, ch, 3);
  vae::Model ae(vae::Config::from_weights(w, nullptr), w);
  Ctx c;
  c.compute = compute == "f32" ? Compute::F32 : Compute::BF16;
  // No arena: the decoder's intermediates are freed as it goes (as in the pipeline); an arena
  // would hold every one of them (9.6 GB at 512²).
  std::printf("autoencoder decode (real FLUX.1 decoder shape, random weights); isa %s; %d threads; compute %s; BF16 peak %.0f GFLOP/s\n",
              cpu::isa_name(cpu::active_isa()),
              threads, compute.c_str(), peak / 1e9);
  for (int size : sizes) {
    int64_t lat = size / 8;
    Tensor z = random_tensor(rng, {1, 16, lat, lat}, DType::F32, 1.0f);
    double t = bench::seconds_of([&] {
      ae.decode(c, z);
    }, reps);
    std::printf("  latent %lldx%lld -> image %dx%d: %.3f s (Winograd weights held: %.0f MiB)\n", static_cast<long long>(lat),
                static_cast<long long>(lat), size, size, t, static_cast<double>(cpu::winograd_weight_bytes()) / (1 << 20));
    std::fflush(stdout);
    if (profile) {
      // One more decode through a timing wrapper (every primitive is made by now): where it goes.
      bench::ProfilingBackend prof(*c.backend);
      Backend* plain = c.backend;
      c.backend = &prof;
      auto t0 = std::chrono::steady_clock::now();
      ae.decode(c, z);
      double t_prof = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      c.backend = plain;
      std::printf(" where one decode's %.3f s go:\n", t_prof);
      prof.print(t_prof);
    }
  }
  return 0;
}

// T5-XXL's shape (d_model 4096, 64 heads of 64, d_ff 10240, 32128 tokens) with `layers` random
// layers in `dtype`; times encoding 256 tokens, scales to the real 24 layers.
int t5_step(int layers, const std::string& dtype_name, int reps) {
  DType wdt = dtype_name == "q8_0" ? DType::Q8_0 : dtype_name == "q4_0" ? DType::Q4_0 : DType::BF16;
  const int64_t D = 4096, HEADS = 64, DKV = 64, FF = 10240, V = 32128, L = 256;
  int threads = ThreadPool::global().size();
  double peak = bench::bf16_peak(threads);
  Rng rng{11};
  io::WeightSet w;
  auto mat = [&](const std::string& n, int64_t out, int64_t in) {
    w.tensors.emplace(n, random_tensor(rng, {out, in}, wdt, std::sqrt(3.0f / static_cast<float>(in))));
  };
  auto ones = [&](const std::string& n) {
    Tensor t = Tensor::zeros({D}, DType::F32);
    for (int64_t i = 0; i < D; ++i) t.data<float>()[i] = 1.0f;
    w.tensors.emplace(n, t);
  };
  w.tensors.emplace("shared.weight", random_tensor(rng, {V, D}, DType::BF16, 1.0f));
  w.tensors.emplace("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", random_tensor(rng, {32, HEADS}, DType::F32, 0.5f));
  for (int i = 0; i < layers; ++i) {
    std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    for (const char* m : {"q", "k", "v"}) mat(p + "0.SelfAttention." + m + ".weight", HEADS * DKV, D);
    mat(p + "0.SelfAttention.o.weight", D, HEADS * DKV);
    mat(p + "1.DenseReluDense.wi_0.weight", FF, D);
    mat(p + "1.DenseReluDense.wi_1.weight", FF, D);
    mat(p + "1.DenseReluDense.wo.weight", D, FF);
    ones(p + "0.layer_norm.weight");
    ones(p + "1.layer_norm.weight");
  }
  ones("encoder.final_layer_norm.weight");
  nlohmann::json cfg = {{"num_heads", HEADS}, {"layer_norm_epsilon", 1e-6}, {"relative_attention_max_distance", 128}};
  text::T5Encoder t5(text::T5Config::from_weights(w, &cfg), w);
  std::vector<float> idv(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) idv[static_cast<size_t>(i)] = static_cast<float>((i * 7919) % V);
  Tensor ids = Tensor::from_floats({1, L}, idv);
  Ctx c;
  c.compute = Compute::BF16;
  Arena arena;
  c.arena = &arena;
  double t = bench::seconds_of([&] {
    t5.forward(c, ids);
    arena.reset();
  }, reps);
  double per_layer = 2.0 * L * (4.0 * D * HEADS * DKV + 3.0 * D * FF) + 4.0 * L * L * HEADS * DKV;
  double full = t / layers * 24;
  std::printf("T5-XXL shape, %s weights, %d of 24 layers, 256 tokens: %.3f s -> 24 layers %.2f s, %.0f GFLOP/s (%.1f%% of the BF16 peak %.0f)\n",
              dtype_name.c_str(), layers, t, full, 24 * per_layer / full / 1e9, 100.0 * 24 * per_layer / full / peak, peak / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: flux_bench write --out DIR [--blocks D,S] [--dtype bf16|q8_0|q4_0]\n"
                         "       flux_bench step --weights FILE [--sizes 256,512,1024] [--compute bf16|f32] [--reps N] [--profile 1]\n"
                         "                       [--device cpu|cuda|cuda:N]\n"
                         "       flux_bench vae [--sizes 256,512] [--compute bf16|f32] [--reps N] [--profile 1]\n"
                         "       flux_bench t5 [--blocks LAYERS,0] [--dtype bf16|q8_0|q4_0] [--reps N]\n");
    return 2;
  }
  std::string mode = argv[1], out = "/tmp", dtype = "bf16", weights, compute = "bf16", device = "cpu";
  int depth = 1, single = 1, reps = 2;
  bool profile = false;
  std::vector<int> sizes = {256, 512, 1024};
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string f = argv[i], v = argv[i + 1];
    if (f == "--out") out = v;
    else if (f == "--dtype") dtype = v;
    else if (f == "--weights") weights = v;
    else if (f == "--compute") compute = v;
    else if (f == "--reps") reps = std::stoi(v);
    else if (f == "--profile") profile = v == "1";
    else if (f == "--device") device = v;
    else if (f == "--blocks") {
      depth = std::stoi(v.substr(0, v.find(',')));
      single = std::stoi(v.substr(v.find(',') + 1));
    } else if (f == "--sizes") {
      sizes.clear();
      for (size_t p = 0; p < v.size();) {
        size_t q = v.find(',', p);
        sizes.push_back(std::stoi(v.substr(p, q == std::string::npos ? std::string::npos : q - p)));
        if (q == std::string::npos) break;
        p = q + 1;
      }
    } else {
      std::fprintf(stderr, "unknown option %s\n", f.c_str());
      return 2;
    }
  }
  try {
    if (mode == "write") return write_checkpoint(out, depth, single, dtype);
    if (mode == "step") return step(weights, sizes, compute, reps, profile, device);
    if (mode == "vae") return vae_step(sizes, compute, reps, profile);
    if (mode == "t5") return t5_step(depth, dtype, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flux_bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
