// Engine-core benchmark (not a test). Prints, in one run on the same machine:
//   - the measured peak: an F32 FMA loop and a BF16 dot-product loop, per thread count;
//   - GEMM at FLUX.1's shapes for BF16, F16, Q8_0, Q4_0 and Q4_K weights (BF16 compute), as
//     GFLOP/s, as a fraction of the measured BF16 peak, and as ratios to oneDNN's bf16 matmul,
//     to ops::linear forced onto its oneDNN path, and to OpenBLAS sgemm on the same shapes;
//     "own": ops::linear forced onto our kernels (AMX, or AVX-512 BF16), BF16 weights;
//   - attention at L = 512, 1280, 4352 with 24 heads of 128;
//   - with --conv S, only the FLUX.1 decoder's 3 x 3 convolutions at image size S (BF16 compute,
//     nhwc): the direct convolution (oneDNN) against the Winograd one (backend/cpu/winograd.h),
//     interleaved, as GFLOP/s of direct-convolution work (2 * 9 * Ci * Co per output pixel).
//
//   build/bench/core_bench [--threads 2] [--quick] [--reps 3] [--m M] [--shape K,N] [--attention] [--conv S]
// GEMM variants of one shape are timed in interleaved rounds, each keeping its best of --reps.
// --attention runs the attention part only.
// --quick runs M = 512 and the first three (K, N) shapes only; --shape K,N that one shape.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <dnnl.hpp>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/flash_attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/winograd.h"
#include "peak.h"
#include "core/thread_pool.h"
#include "ops/ops.h"

using namespace fluxpipe;
using namespace fluxpipe::bench;

namespace {

std::vector<float> random_floats(int64_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> f(static_cast<size_t>(n));
  for (float& v : f) v = nd(rng);
  return f;
}

Tensor random_weights(int64_t N, int64_t K, DType d) {
  std::vector<float> f = random_floats(N * K, 0.02f, 1);
  Tensor w = Tensor::zeros({N, K}, d);
  from_f32(d, f.data(), w.data<uint8_t>(), N * K);
  return w;
}

void fill_random_bf16(uint16_t* dst, int64_t n, float scale) {
  std::vector<float> f = random_floats(n, scale, 2);
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(f[static_cast<size_t>(i)]);
}

// oneDNN's bf16 matmul alone on one shape, ready to run (bf16 A, B, F32 C, nothing converted).
struct OneDnnGemm {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{eng};
  dnnl::memory a, b, c;
  dnnl::matmul mm;
  OneDnnGemm(int64_t M, int64_t N, int64_t K) {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    dnnl::memory::desc a_md({M, K}, dt::bf16, tag::ab), b_md({K, N}, dt::bf16, tag::ba), c_md({M, N}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
    a = dnnl::memory(a_md, eng);
    b = dnnl::memory(b_md, eng);
    c = dnnl::memory(c_md, eng);
    // Random values, as the engine's are: AMX throughput depends on the data (constant inputs
    // draw less power and can run faster), so every variant gets random inputs of similar scale.
    fill_random_bf16(static_cast<uint16_t*>(a.get_data_handle()), M * K, 1.0f);
    fill_random_bf16(static_cast<uint16_t*>(b.get_data_handle()), N * K, 0.02f);
    mm = dnnl::matmul(pd);
  }
  void run() {
    mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
};

// Times every variant once per round, rounds after a warm-up of each, and keeps each variant's
// best: interleaving gives all variants the same conditions on a machine with noisy neighbours.
std::vector<double> best_interleaved(const std::vector<std::function<void()>>& variants, int rounds) {
  std::vector<double> best(variants.size(), 1e30);
  for (const auto& v : variants) v();
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < variants.size(); ++i) {
      auto t0 = std::chrono::steady_clock::now();
      variants[i]();
      best[i] = std::min(best[i], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return best;
}

// The decoder's 3 x 3 convolutions at image size S (latent S / 8), direct against Winograd.
void conv_bench(int64_t S, int reps) {
  const int64_t s = S / 8;
  struct Shape3 {
    int64_t ci, co, hw;
  };
  const Shape3 shapes[] = {{512, 512, s},     {512, 512, 2 * s}, {512, 512, 4 * s}, {512, 256, 4 * s},
                           {256, 256, 4 * s}, {256, 256, 8 * s}, {256, 128, 8 * s}, {128, 128, 8 * s}};
  Ctx ctx;
  ctx.compute = Compute::BF16;
  Conv2dParams p{1, 1, 1, 1, 1};
  p.layout = Layout::nhwc;
  std::printf("decoder 3x3 convolutions at image %lldx%lld, nhwc, BF16 compute, best of %d (GFLOP/s of direct work)\n",
              static_cast<long long>(S), static_cast<long long>(S), reps);
  std::printf("  %4s %4s %6s | %8s %8s | winograd/direct time\n", "Ci", "Co", "pixels", "direct", "winograd");
  for (const Shape3& sh : shapes) {
    Tensor x = Tensor::from_floats({1, sh.hw, sh.hw, sh.ci}, random_floats(sh.hw * sh.hw * sh.ci, 1.0f, 5));
    Tensor w = Tensor::from_floats({sh.co, sh.ci, 3, 3}, random_floats(sh.co * sh.ci * 9, 0.05f, 6));
    std::vector<std::function<void()>> variants = {[&] {
                                                     cpu::winograd_force(0);
                                                     ops::conv2d(ctx, x, w, nullptr, p);
                                                   },
                                                   [&] {
                                                     cpu::winograd_force(1);
                                                     ops::conv2d(ctx, x, w, nullptr, p);
                                                   }};
    std::vector<double> t = best_interleaved(variants, reps);
    cpu::winograd_force(-1);
    const double flop = 2.0 * 9 * static_cast<double>(sh.ci * sh.co) * static_cast<double>(sh.hw * sh.hw);
    std::printf("  %4lld %4lld %4lld^2 | %8.0f %8.0f | %.2f\n", static_cast<long long>(sh.ci), static_cast<long long>(sh.co),
                static_cast<long long>(sh.hw), flop / t[0] / 1e9, flop / t[1] / 1e9, t[1] / t[0]);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Before the first oneDNN primitive below (OneDnnGemm): otherwise FLUXPIPE_ISA cannot hold
  // oneDNN, and every oneDNN figure (ours included) runs at the CPU's best level.
  cpu::isa_apply_to_onednn();
  int threads = 2, reps = 3;
  bool quick = false;
  int64_t only_m = 0;
  bool attention_only = false;
  int64_t conv_size = 0;
  long long only_k = 0, only_n = 0;
  auto usage = [] {
    std::fprintf(stderr, "usage: core_bench [--threads N] [--reps N] [--quick] [--m M] [--shape K,N] [--attention] [--conv S]\n");
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--attention")) attention_only = true;
    else if (!std::strcmp(argv[i], "--conv") && i + 1 < argc) conv_size = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--m") && i + 1 < argc) only_m = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%lld,%lld", &only_k, &only_n) != 2 || only_k <= 0 || only_n <= 0) return usage();
    } else {
      return usage();
    }
  }
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);

  double fma1 = peak(false, 1), bf1 = peak(true, 1);
  double fmaN = peak(false, threads), bfN = peak(true, threads);   // bfN: raised to the AMX peak where present
  std::printf("peak (measured): F32 FMA %.0f GFLOP/s on 1 thread, %.0f on %d; BF16 dot %.0f on 1, %.0f on %d\n",
              fma1 / 1e9, fmaN / 1e9, threads, bf1 / 1e9, bfN / 1e9, threads);
  if (cpu::gemm_has_amx()) {
    double amx1 = amx_peak(1), amxN = amx_peak(threads);
    std::printf("peak (measured): AMX BF16 tiles %.0f GFLOP/s on 1 thread, %.0f on %d\n", amx1 / 1e9, amxN / 1e9, threads);
    bfN = std::max(bfN, amxN);
  }
  std::printf("BF16 peak used below: %.0f GFLOP/s\n", bfN / 1e9);
  ThreadPool::set_global_threads(threads);
  if (conv_size > 0) {
    conv_bench(conv_size, reps);
    return 0;
  }
  std::printf("gemm kernels: F32 %s, BF16 %s; %d threads, best of %d\n\n", cpu::gemm_kernel_name(Compute::F32),
              cpu::gemm_kernel_name(Compute::BF16), threads, reps);

  std::vector<std::pair<int64_t, int64_t>> shapes = {{3072, 3072}, {3072, 9216}, {3072, 12288}, {12288, 3072},
                                                     {3072, 21504}, {15360, 3072}, {4096, 3072}};
  std::vector<int64_t> ms = {512, 1280, 4352};
  if (quick) {
    shapes.resize(3);
    ms = {512};
  }
  if (only_m > 0) ms = {only_m};   // --m: one token count (with --quick: its first three shapes)
  if (only_k > 0) shapes = {{only_k, only_n}};
  const DType dtypes[] = {DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K};
  std::printf("GFLOP/s. dnnl: oneDNN bf16 matmul alone (bf16 inputs ready); sgemm: OpenBLAS; lib BF16 / lib Q8_0:\n"
              "ops::linear forced onto its oneDNN path (F32 activations rounded to bf16, weights read in place\n"
              "or widened to bf16 in column chunks); BF16..Q4_K: ops::linear as the engine runs it (%s).\n",
              cpu::gemm_has_amx() ? "our AMX kernel, weights widened tile by tile" : "oneDNN for M >= 64");
  std::printf("%5s %6s %6s | %6s %6s | %6s %6s | %6s %6s %6s %6s %6s | BF16/peak | BF16/dnnl BF16/lib BF16/blas | Q8/lib Q8/BF16 Q4_0/BF16 Q4K/BF16 F16/BF16 |   own own/dnnl\n",
              "M", "K", "N", "dnnl", "sgemm", "lib", "lib Q8", "BF16", "F16", "Q8_0", "Q4_0", "Q4_K");
  Ctx ctx;
  ctx.compute = Compute::BF16;
  if (attention_only) ms.clear();
  double gemm_sum = 0;   // "as run" BF16 GFLOP/s over the shapes measured, for the attention ratio
  int gemm_count = 0;
  for (int64_t M : ms) {
    for (auto [K, N] : shapes) {
      double flop = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
      // oneDNN has no bf16 matmul below AVX-512 (FLUXPIPE_ISA=avx2): that column is then "-".
      std::unique_ptr<OneDnnGemm> onednn;
      try {
        onednn = std::make_unique<OneDnnGemm>(M, N, K);
      } catch (const dnnl::error&) {
      }
      std::vector<float> A = random_floats(M * K, 1.0f, 3), B = random_floats(N * K, 0.02f, 4), C(static_cast<size_t>(M * N));
      Tensor x = Tensor::from_floats({M, K}, A);
      std::vector<Tensor> ws;
      for (DType d : dtypes) ws.push_back(random_weights(N, K, d));
      std::vector<std::function<void()>> variants = {
          [&] {
            if (onednn) onednn->run();
          },
          [&] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0f,
                        A.data(), static_cast<int>(K), B.data(), static_cast<int>(K), 0.0f, C.data(), static_cast<int>(N));
          },
          [&] {   // the oneDNN path of ops::linear, BF16 weights read in place
            cpu::gemm_force_path(cpu::GemmPath::onednn);
            ops::linear(ctx, x, ws[0]);
            cpu::gemm_force_path(cpu::GemmPath::automatic);
          },
          [&] {   // the oneDNN path, Q8_0 weights widened to bf16 in column chunks first
            cpu::gemm_force_path(cpu::GemmPath::onednn);
            ops::linear(ctx, x, ws[2]);
            cpu::gemm_force_path(cpu::GemmPath::automatic);
          }};
      for (size_t d = 0; d < ws.size(); ++d) variants.push_back([&, d] { ops::linear(ctx, x, ws[d]); });
      variants.push_back([&] {   // our own kernels (AMX or AVX-512 BF16) forced, BF16 weights
        cpu::gemm_force_path(cpu::GemmPath::own);
        ops::linear(ctx, x, ws[0]);
        cpu::gemm_force_path(cpu::GemmPath::automatic);
      });
      std::vector<double> t = best_interleaved(variants, reps);
      double t_dnnl = t[0], t_blas = t[1];
      double lib_bf16 = flop / t[2] / 1e9, lib_q8 = flop / t[3] / 1e9;
      double gf[5];
      for (int d = 0; d < 5; ++d) gf[d] = flop / t[4 + static_cast<size_t>(d)] / 1e9;
      double own = flop / t[4 + ws.size()] / 1e9;
      double dn = onednn ? flop / t_dnnl / 1e9 : std::nan(""), bl = flop / t_blas / 1e9;
      gemm_sum += gf[0];
      ++gemm_count;
      std::printf("%5lld %6lld %6lld | %6.0f %6.0f | %6.0f %6.0f | %6.0f %6.0f %6.0f %6.0f %6.0f |   %5.1f%%  |   %5.2f    %5.2f    %5.2f  |  %5.2f  %5.2f  %5.2f  %5.2f  %5.2f | %5.0f  %5.2f\n",
                  static_cast<long long>(M), static_cast<long long>(K), static_cast<long long>(N), dn, bl, lib_bf16, lib_q8,
                  gf[0], gf[1], gf[2], gf[3], gf[4], 100.0 * gf[0] * 1e9 / bfN, gf[0] / dn, gf[0] / lib_bf16, gf[0] / bl,
                  gf[2] / lib_q8, gf[2] / gf[0], gf[3] / gf[0], gf[4] / gf[0], gf[1] / gf[0], own, own / dn);
      std::fflush(stdout);
    }
  }

  std::printf("\nattention, 24 heads x 128, BF16 compute (FLOP = 4 L^2 D H); fused: the fused kernel (AMX tiles where the\n"
              "CPU has AMX, else AVX-512 BF16 dot products), unfused: the oneDNN-product path, in the same run:\n");
  for (int64_t L : {512, 1280, 4352}) {
    if (quick && L > 1280) break;
    Tensor q = Tensor::zeros({1, 24, L, 128}, DType::F32);
    std::vector<float> f(static_cast<size_t>(q.numel()));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : f) v = nd(rng);
    std::memcpy(q.data<float>(), f.data(), f.size() * 4);
    double flop = 4.0 * static_cast<double>(L) * static_cast<double>(L) * 128 * 24;
    double t = seconds_of([&] { ops::attention(ctx, q, q, q, 1.0f / std::sqrt(128.0f)); }, reps);
    cpu::flash_attention_enable(false);
    double tu = seconds_of([&] { ops::attention(ctx, q, q, q, 1.0f / std::sqrt(128.0f)); }, reps);
    cpu::flash_attention_enable(true);
    std::printf("  L=%5lld  fused %7.3f s %6.0f GFLOP/s (%4.1f%% of peak) | unfused %7.3f s %6.0f GFLOP/s | fused/unfused %.2f",
                static_cast<long long>(L), t, flop / t / 1e9, 100.0 * flop / t / bfN, tu, flop / tu / 1e9, tu / t);
    if (gemm_count > 0) std::printf(" | fused / mean GEMM as run %.2f", flop / t / 1e9 / (gemm_sum / gemm_count));
    std::printf("\n");
  }
  return 0;
}
