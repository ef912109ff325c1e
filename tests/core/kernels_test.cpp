// Every CPU kernel against the plain double-precision reference, on random data with awkward
// sizes (1, 15, 16, 17, 31, 33, ...); the fast GEMM paths against the portable one; results
// independent of the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>

#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/gemm_int8.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/onednn_gemm.h"
#include "backend/cpu/reference.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/weights.h"
#include "ops/ops.h"
#include "random_tensors.h"
#include "test_util.h"

namespace fluxpipe {
namespace {

using testing::convert;
using testing::randn;

// max |a - b| <= atol + rtol * max|b|, with a side-by-side print of the first values on failure.
void expect_close(const Tensor& a, const Tensor& b, double atol, double rtol, const std::string& what) {
  std::vector<float> x = a.to_floats(), y = b.to_floats();
  ASSERT_EQ(x.size(), y.size()) << what;
  double max_ref = 0, max_diff = 0;
  size_t worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(y[i])));
    // A NaN or an infinity where the reference differs counts as an infinite difference, which no
    // later element can hide.
    double d = x[i] == y[i] ? 0.0 : std::fabs(static_cast<double>(x[i]) - y[i]);
    if (std::isnan(d)) d = std::numeric_limits<double>::infinity();
    if (d > max_diff) {
      max_diff = d;
      worst = i;
    }
  }
  if (!(max_diff <= atol + rtol * max_ref)) {
    std::string first;
    for (size_t i = 0; i < std::min<size_t>(6, x.size()); ++i) first += " (" + std::to_string(x[i]) + " vs " + std::to_string(y[i]) + ")";
    ADD_FAILURE() << what << ": max diff " << max_diff << " at " << worst << " (max ref " << max_ref << "); first:" << first;
  }
}

const int kSizes[] = {1, 15, 16, 17, 31, 33};

// The fused modulation ops are the unfused sequences they replace, bit for bit (B = 2 so the
// per-batch vectors are picked by row; D odd and one row so no vector width hides an edge).
TEST(Kernels, FusedModulationOpsEqualTheirUnfusedSequences) {
  Ctx c;
  const Tensor one = Tensor::from_floats({1}, {1.0f});
  for (auto [B, L, D] : {std::tuple<int64_t, int64_t, int64_t>{2, 37, 301}, {1, 1, 16}, {2, 130, 3072}}) {
    Tensor x = randn({B, L, D}, 61, 3.0f), y = randn({B, L, D}, 62), shift = randn({B, 1, D}, 63), scale = randn({B, 1, D}, 64, 0.5f);
    Tensor unfused = ops::add(c, ops::mul(c, ops::add(c, scale, one), ops::layer_norm(c, x, nullptr, nullptr, 1e-6f)), shift);
    EXPECT_EQ(ops::layer_norm_modulate(c, x, shift, scale, 1e-6f).to_floats(), unfused.to_floats()) << B << "x" << L << "x" << D;
    EXPECT_EQ(ops::add_gated(c, x, scale, y).to_floats(), ops::add(c, x, ops::mul(c, scale, y)).to_floats()) << B << "x" << L << "x" << D;
  }
  Tensor x = randn({2, 3, 8}, 65), v = randn({2, 1, 8}, 66);
  EXPECT_THROW(ops::layer_norm_modulate(c, x, randn({1, 1, 8}, 67), v, 1e-6f), UserError);   // batch mismatch
  EXPECT_THROW(ops::add_gated(c, x, randn({2, 3, 8}, 68), x), UserError);                     // gate not [B, 1, D]
  EXPECT_THROW(ops::add_gated(c, x, v, randn({2, 3, 9}, 69)), UserError);
}

TEST(Kernels, LinearF32AgainstReference) {
  Ctx c;
  for (int M : kSizes) {
    for (int N : {1, 17, 33, 130}) {
      for (int K : {1, 16, 31, 33, 300}) {
        Tensor x = randn({M, K}, 1 + M), w = randn({N, K}, 2 + N, 0.2f), b = randn({N}, 3);
        Tensor got = ops::linear(c, x, w, &b);
        Tensor want = Tensor::zeros({M, N}, DType::F32);
        cpu::ref::linear(x, w, &b, want);
        expect_close(got, want, 1e-4, 1e-5, "linear M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
      }
    }
  }
}

TEST(Kernels, LinearEveryWeightDtypeWidensExactly) {
  // Compute F32: the product of the dequantized weights, so against the reference fed the same
  // dequantized values the only difference is float summation order.
  Ctx c;
  for (DType d : {DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2, DType::Q8_0, DType::Q4_0, DType::Q4_1,
                  DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q6_K}) {
    for (int M : {1, 17}) {
      Tensor x = randn({M, 512}, 5), wf = randn({33, 512}, 6, 0.1f);
      Tensor w = convert(wf, d);
      Tensor got = ops::linear(c, x, w);
      Tensor want = Tensor::zeros({M, 33}, DType::F32);
      cpu::ref::linear(x, w, nullptr, want);
      expect_close(got, want, 1e-4, 1e-5, std::string("linear w=") + name(d));
    }
  }
}

TEST(Kernels, LinearBf16PathAgainstReference) {
  Ctx c;
  c.compute = Compute::BF16;
  for (int M : kSizes) {
    Tensor x = randn({M, 257}, 8), w = randn({70, 257}, 9, 0.1f);
    Tensor got = ops::linear(c, x, w);
    // The reference fed bf16-rounded inputs: what the BF16 path must compute up to summation order.
    Tensor want = Tensor::zeros({M, 70}, DType::F32);
    cpu::ref::linear(convert(x, DType::BF16), convert(w, DType::BF16), nullptr, want);
    expect_close(got, want, 1e-4, 1e-4, "linear bf16 M=" + std::to_string(M));
  }
}

// Our BF16 kernels forced for products large enough to go to oneDNN otherwise: rows that do not
// fill the 6-row tiles, several K chunks (the last ragged), 64-column tiles with a partial last
// one and a lone 32-column panel, bf16 and Q8_0 weights (packed through widening), and more
// column blocks than threads (the weights of the next block are fetched ahead). The same bf16
// inputs through the reference.
TEST(Kernels, OwnBf16KernelsOverKChunksAndRaggedTilesMatchTheReference) {
  cpu::gemm_force_path(cpu::GemmPath::own);
  cpu::gemm_int8_allow(false);
  Ctx c;
  c.compute = Compute::BF16;
  for (int64_t N : {100, 90, 300}) {
    for (DType d : {DType::BF16, DType::Q8_0}) {
      Tensor x = randn({70, 1120}, 40), w = convert(randn({N, 1120}, 41, 0.1f), d);
      Tensor want = Tensor::zeros({70, N}, DType::F32);
      cpu::ref::linear(convert(x, DType::BF16), convert(convert(w, DType::F32), DType::BF16), nullptr, want);
      expect_close(ops::linear(c, x, w), want, 1e-4, 1e-4,
                   std::string("own bf16 kernels, N=") + std::to_string(N) + " w=" + name(d) + " (" +
                       cpu::gemm_kernel_name(Compute::BF16) + ")");
    }
  }
  cpu::gemm_int8_allow(true);
  cpu::gemm_force_path(cpu::GemmPath::automatic);
}

// BF16 weights of a file mapping, reordered once for oneDNN and kept (onednn_gemm.h): the same
// products bit for bit as on the plain weights, against the reference too; the mapped weights
// still read right after their pages were dropped; a release frees the copy and the next product
// remakes it; and weights loaded anew (a new file at the same path, likely at the same address)
// are never served another file's copy.
TEST(Kernels, PackedBf16WeightsGiveThePlainProductsAndFollowTheirStorage) {
  if (!cpu::isa_at_least(cpu::Isa::avx512bf16)) GTEST_SKIP() << "the oneDNN bf16 path needs AVX-512 BF16 ("
                                                              << cpu::isa_name(cpu::active_isa()) << " here)";
  cpu::gemm_force_path(cpu::GemmPath::onednn);
  cpu::gemm_int8_allow(false);
  Ctx c;
  c.compute = Compute::BF16;
  testing::TempDir dir;
  const std::string path = dir.path() + "/w.safetensors";
  cpu::release_packed_weights(nullptr);
  for (uint64_t seed : {50, 51}) {
    const int64_t M = 70, N = 300, K = 3072;   // N x K x 2 bytes: many whole pages to drop
    io::write_safetensors(path, {{"w", convert(randn({N, K}, seed, 0.1f), DType::BF16)}});
    io::WeightSet ws = io::load_weights(path);
    const Tensor& w = ws.tensors.at("w");
    ASSERT_TRUE(w.storage()->file_mapped);
    const std::vector<float> w_before = w.to_floats();
    Tensor x = randn({M, K}, seed + 10);
    Tensor want = Tensor::zeros({M, N}, DType::F32);
    cpu::ref::linear(convert(x, DType::BF16), w, nullptr, want);

    cpu::set_pack_weights(false);
    const size_t kept = cpu::packed_weight_bytes();   // the previous file's copy, its storage gone
    const std::vector<float> plain = ops::linear(c, x, w).to_floats();
    EXPECT_EQ(cpu::packed_weight_bytes(), kept);
    cpu::set_pack_weights(true);
    Tensor packed = ops::linear(c, x, w);
    EXPECT_GE(cpu::packed_weight_bytes(), static_cast<size_t>(N * K * 2)) << "no packed copy was made";
    EXPECT_EQ(packed.to_floats(), plain) << "seed " << seed;
    expect_close(packed, want, 1e-4, 1e-4, "packed bf16 weights, seed " + std::to_string(seed));
    EXPECT_EQ(w.to_floats(), w_before) << "the mapped weights after their pages were dropped";
    EXPECT_EQ(ops::linear(c, x, w).to_floats(), plain) << "second product on the kept copy";
    EXPECT_GE(cpu::release_packed_weights(w.storage().get()), static_cast<size_t>(N * K * 2));
    EXPECT_EQ(cpu::packed_weight_bytes(), 0u);
    EXPECT_EQ(ops::linear(c, x, w).to_floats(), plain) << "remade after the release";
  }
  cpu::release_packed_weights(nullptr);
  cpu::gemm_int8_allow(true);
  cpu::gemm_force_path(cpu::GemmPath::automatic);
}

// A linear's bias: oneDNN adds it as it writes the product (its bf16 path on weights read in
// place, widened in column chunks, or kept packed; its F32 path below bf16 instructions), the
// other paths in a pass after. Either way the result is the product plus the bias, rounded once:
// bit for bit what an add after an unbiased product gives.
TEST(Kernels, ABiasAddedInTheProductEqualsAnAddAfter) {
  const cpu::Isa before = cpu::active_isa();
  cpu::gemm_int8_allow(false);
  testing::TempDir dir;
  const std::string path = dir.path() + "/w.safetensors";
  const int64_t K = 4096, N = 4160;   // Q8_0 is widened in chunks of 2048 rows here: three chunks
  io::write_safetensors(path, {{"w", convert(randn({N, K}, 80, 0.05f), DType::BF16)}});
  io::WeightSet ws = io::load_weights(path);
  const Tensor& mapped = ws.tensors.at("w");
  const Tensor in_memory = convert(randn({N, K}, 80, 0.05f), DType::BF16), q8 = convert(randn({N, K}, 81, 0.05f), DType::Q8_0);
  const Tensor bias = randn({N}, 82);
  std::vector<cpu::Isa> levels{before};
  if (before != cpu::Isa::avx2 && static_cast<int>(cpu::detected_isa()) >= static_cast<int>(cpu::Isa::avx2)) {
    levels.push_back(cpu::Isa::avx2);
  }
  for (cpu::Isa level : levels) {
    cpu::isa_set_for_tests(level);
    for (Compute comp : {Compute::BF16, Compute::F32}) {
      Ctx c;
      c.compute = comp;
      for (int64_t M : {1, 8, 70}) {
        Tensor x = randn({M, K}, 83 + M);
        for (const Tensor* w : {&mapped, &in_memory, &q8}) {
          const std::string what = std::string("M ") + std::to_string(M) + " " + name(w->dtype()) +
                                   (w == &mapped ? " mapped" : "") + " at " + cpu::isa_name(level) +
                                   (comp == Compute::BF16 ? " bf16" : " f32");
          Tensor after = ops::add(c, ops::linear(c, x, *w), bias);
          EXPECT_EQ(ops::linear(c, x, *w, &bias).to_floats(), after.to_floats()) << what;
        }
      }
    }
  }
  cpu::isa_set_for_tests(before);
  cpu::release_packed_weights(nullptr);
  cpu::gemm_int8_allow(true);
}

// FLUXPIPE_ISA's levels (backend/cpu/isa.h): at every level this CPU has, the kernels it allows
// compute the reference's products, elementwise ops and attention; the kernel name follows.
TEST(Kernels, EveryIsaLevelThisCpuHasMatchesTheReference) {
  const cpu::Isa best = cpu::detected_isa(), before = cpu::active_isa();
  cpu::gemm_force_path(cpu::GemmPath::own);   // oneDNN keeps the level it first saw; ours follow
  cpu::gemm_int8_allow(false);                // the integer path has its own test below
  for (cpu::Isa level : {cpu::Isa::generic, cpu::Isa::avx2, cpu::Isa::avx512, cpu::Isa::avx512bf16, cpu::Isa::amx}) {
    if (static_cast<int>(level) > static_cast<int>(best)) {
      EXPECT_THROW(cpu::isa_set_for_tests(level), fluxpipe::UserError) << cpu::isa_name(level);
      continue;
    }
    cpu::isa_set_for_tests(level);
    const std::string at = std::string(" at ") + cpu::isa_name(level);
    for (Compute mode : {Compute::F32, Compute::BF16}) {
      Ctx c;
      c.compute = mode;
      Tensor x = randn({40, 257}, 31), w = randn({70, 257}, 32, 0.1f);
      Tensor want = Tensor::zeros({40, 70}, DType::F32);
      bool bf16 = mode == Compute::BF16;
      cpu::ref::linear(bf16 ? convert(x, DType::BF16) : x, bf16 ? convert(w, DType::BF16) : w, nullptr, want);
      expect_close(ops::linear(c, x, w), want, 1e-4, 1e-4, std::string("linear ") + cpu::gemm_kernel_name(mode) + at);
      // Quantized weights dequantize by the level's code too.
      Tensor wq = convert(randn({64, 256}, 33, 0.1f), DType::Q8_0), xq = randn({9, 256}, 34);
      Tensor want_q = Tensor::zeros({9, 64}, DType::F32);
      cpu::ref::linear(bf16 ? convert(xq, DType::BF16) : xq, bf16 ? convert(convert(wq, DType::F32), DType::BF16) : convert(wq, DType::F32),
                       nullptr, want_q);
      expect_close(ops::linear(c, xq, wq), want_q, 1e-4, 1e-4, "linear q8_0" + at);
    }
    const char* name = cpu::gemm_kernel_name(Compute::BF16);
    const char* expected = level == cpu::Isa::amx ? "amx-bf16" : level == cpu::Isa::avx512bf16 ? "avx512-bf16"
                           : level == cpu::Isa::avx512 ? "avx512" : level == cpu::Isa::avx2 ? "avx2" : "generic";
    EXPECT_STREQ(name, expected);
    Ctx c;
    Tensor q = randn({1, 2, 37, 16}, 35), k = randn({1, 2, 45, 16}, 36), v = randn({1, 2, 45, 16}, 37);
    Tensor want = Tensor::zeros({1, 2, 37, 16}, DType::F32);
    cpu::ref::attention(q, k, v, 0.25f, nullptr, false, want);
    expect_close(ops::attention(c, q, k, v, 0.25f), want, 1e-4, 1e-5, "attention" + at);
    // Activations: AVX-512, AVX2 or scalar code by level, all within the reference's tolerance
    // (large inputs included: the exponential's clamps).
    Tensor xa = randn({1, 1037}, 41, 6.0f);
    xa.data<float>()[0] = 95.0f;
    xa.data<float>()[1] = -95.0f;
    for (Unary op : {Unary::gelu_tanh, Unary::silu, Unary::quick_gelu}) {
      Tensor want_a = Tensor::zeros(xa.shape(), DType::F32);
      cpu::ref::unary(op, xa, want_a);
      Tensor got_a = op == Unary::gelu_tanh ? ops::gelu_tanh(c, xa) : op == Unary::silu ? ops::silu(c, xa) : ops::quick_gelu(c, xa);
      expect_close(got_a, want_a, 1e-6, 1e-5, "activation" + at);
    }
    // Softmax by level (AVX-512, AVX2 or scalar): rows with a tail, a large spread, and one
    // fully masked row (which becomes zeros).
    Tensor xs = randn({2, 1037}, 42, 8.0f);
    Tensor want_s = Tensor::zeros(xs.shape(), DType::F32);
    cpu::ref::softmax(xs, want_s);
    expect_close(ops::softmax(c, xs), want_s, 1e-7, 1e-5, "softmax" + at);
    Tensor masked = Tensor::from_floats({1, 13}, std::vector<float>(13, -std::numeric_limits<float>::infinity()));
    EXPECT_EQ(ops::softmax(c, masked).to_floats(), std::vector<float>(13, 0.0f)) << "masked softmax row" << at;
    // The BF16 convolution: oneDNN's bf16 one, or its F32 one on bf16-rounded inputs.
    Ctx cb;
    cb.compute = Compute::BF16;
    Tensor x = randn({1, 8, 9, 11}, 38), w = randn({6, 8, 3, 3}, 39, 0.2f), b3 = randn({6}, 40);
    Conv2dParams p{1, 1, 1, 1, 1};
    Tensor got = ops::conv2d(cb, x, w, &b3, p);
    Tensor want_conv = Tensor::zeros(got.shape(), DType::F32);
    cpu::ref::conv2d(convert(x, DType::BF16), convert(w, DType::BF16), &b3, p, want_conv);
    expect_close(got, want_conv, 1e-4, 1e-4, "conv2d bf16" + at);
  }
  cpu::isa_set_for_tests(before);
  cpu::gemm_force_path(cpu::GemmPath::automatic);
  cpu::gemm_int8_allow(true);
}

// The integer path for Q8_0 / Q4_0 weights (CPUs with AVX2 and no bf16 dot products; here
// forced with the ISA level): bit for bit the scalar arithmetic it documents, with AVX-VNNI and
// with the plain AVX2 kernels, and within the activation-rounding bound of the exact product.
// Odd M and N exercise the partial tiles and panel; Q8_0 weights of -128 and 127 (the extremes
// of the signed-byte kernel's pairs) are set by hand.
TEST(Kernels, Int8ProductsAreTheirArithmeticAndWithinTheRoundingBound) {
  const cpu::Isa before = cpu::active_isa();
  if (static_cast<int>(cpu::detected_isa()) < static_cast<int>(cpu::Isa::avx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  cpu::isa_set_for_tests(cpu::Isa::avx2);
  if (!cpu::gemm_int8_available(DType::Q4_0)) {
    cpu::isa_set_for_tests(before);
    GTEST_SKIP() << "FLUXPIPE_INT8=0 is set: the integer path does not run";
  }
  Ctx c;
  c.compute = Compute::BF16;
  const int64_t M = 37, N = 70, K = 320;
  Tensor x = randn({M, K}, 51);
  float* xp = x.data<float>();
  xp[5] = 300.0f;                                      // an outlier: its block's other values lose precision
  for (int j = 64; j < 96; ++j) xp[K + j] = 0.0f;      // an all-zero block (scale 0)
  for (DType wt : {DType::Q8_0, DType::Q4_0}) {
    ASSERT_TRUE(cpu::gemm_int8_available(wt)) << name(wt);
    Tensor w = convert(randn({N, K}, 52, 0.1f), wt);
    if (wt == DType::Q8_0) {   // row 3's first block: -128 and 127 against the outlier row's large values
      int8_t* q = reinterpret_cast<int8_t*>(w.data<uint8_t>() + 3 * (K / 32) * 34 + 2);
      for (int j = 0; j < 32; ++j) q[j] = static_cast<int8_t>(j % 2 ? 127 : -128);
    }
    cpu::BMatrix B{wt, w.data<uint8_t>(), w.size(1) / 32 * static_cast<int64_t>(info(wt).block_bytes)};
    Tensor got = ops::linear(c, x, w);
    Tensor want = Tensor::zeros({M, N}, DType::F32);
    cpu::gemm_int8_reference(xp, K, B, want.data<float>(), N, M, N, K);
    std::vector<float> g = got.to_floats(), r = want.to_floats();
    std::vector<float> wf = convert(w, DType::F32).to_floats();
    int differ_from_widened = 0;
    double worst_ratio = 0;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        size_t i = static_cast<size_t>(m * N + n);
        ASSERT_EQ(g[i], r[i]) << name(wt) << " (" << m << ", " << n << "): the kernel is not its documented arithmetic";
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          double p = static_cast<double>(xp[m * K + k]) * wf[static_cast<size_t>(n * K + k)];
          exact += p;
          mag += std::fabs(p);
        }
        double bound = cpu::gemm_int8_error_bound(xp, K, B, m, n, K);
        EXPECT_LE(std::fabs(g[i] - exact), bound + 1e-5 * mag + 1e-6) << name(wt) << " (" << m << ", " << n << ")";
        if (m != 0) worst_ratio = std::max(worst_ratio, bound / std::max(mag, 1e-30));   // row 0 has the outlier
        if (std::fabs(g[i] - exact) > 1e-6 * mag) ++differ_from_widened;
      }
    }
    // The bound is a real limit (for normal rows d_a/2 is about 1% of a block's mean |x|; it is
    // larger only where an outlier shares a block), and the integer path really ran: it is not
    // the exact product.
    EXPECT_LT(worst_ratio, 0.02) << name(wt);
    EXPECT_GT(differ_from_widened, M * N / 2) << name(wt);
    // Turned off, the same call is the widening path again.
    cpu::gemm_int8_allow(false);
    Tensor off = ops::linear(c, x, w);
    cpu::gemm_int8_allow(true);
    EXPECT_NE(off.to_floats(), g) << name(wt);
    // The plain AVX2 kernels (CPUs without AVX-VNNI) compute the same integers: the same bits.
    cpu::gemm_int8_force_no_vnni(true);
    EXPECT_STREQ(cpu::gemm_int8_kernel_name(), "avx2");
    ASSERT_TRUE(cpu::gemm_int8_available(wt));
    EXPECT_EQ(ops::linear(c, x, w).to_floats(), r) << "plain AVX2 " << name(wt);
    cpu::gemm_int8_force_no_vnni(false);
  }
  cpu::isa_set_for_tests(before);
}

TEST(Kernels, AmxAndAvx512Bf16KernelsAgree) {
  Ctx c;
  c.compute = Compute::BF16;
  for (int M : {1, 31, 32, 33, 70}) {
    for (int K : {16, 33, 256, 300}) {
      Tensor x = randn({M, K}, 70 + M), w = convert(randn({97, K}, 71, 0.1f), DType::BF16);
      Tensor first = ops::linear(c, x, w);
      cpu::gemm_force_no_amx(true);
      Tensor second = ops::linear(c, x, w);
      cpu::gemm_force_no_amx(false);
      // Both multiply the same bf16 values exactly and accumulate in F32; only the order differs.
      expect_close(first, second, 1e-4, 1e-5, "amx vs avx512-bf16 M=" + std::to_string(M) + " K=" + std::to_string(K));
    }
  }
}

TEST(Kernels, Avx2DequantizationIsBitIdenticalToTheReference) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  for (DType d : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    Tensor w = convert(randn({4, 512}, 91, 0.5f), d);
    std::vector<float> fast(2048), slow(2048);
    ASSERT_TRUE(cpu::dequantize_avx2(d, w.data<uint8_t>(), fast.data(), 2048)) << name(d);
    to_f32(d, w.data<uint8_t>(), slow.data(), 2048);
    EXPECT_EQ(fast, slow) << name(d);
  }
  EXPECT_FALSE(cpu::dequantize_avx2(DType::Q4_K, nullptr, nullptr, 0)) << "not covered: the caller falls back";
  // Rounding to bf16 values: nearest even, NaN quieted, as f32_to_bf16, bit for bit.
  std::vector<float> x = randn({1, 1000}, 92, 3.0f).to_floats();
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[5] = std::numeric_limits<float>::infinity();
  x[7] = -0.0f;
  x[11] = 1.00390625f;   // exactly halfway between two bf16 values: to even
  std::vector<float> want = x;
  for (float& v : want) v = bf16_to_f32(f32_to_bf16(v));
  ASSERT_TRUE(cpu::round_to_bf16_avx2(x.data(), static_cast<int64_t>(x.size())));
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &x[i], 4);
    std::memcpy(&b, &want[i], 4);
    ASSERT_EQ(a, b) << "at " << i;
  }
}

TEST(Kernels, VectorDequantizationIsBitIdenticalToTheReference) {
  for (DType d : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    Tensor w = convert(randn({4, 512}, 90, 0.5f), d);
    std::vector<float> fast(2048), slow(2048);
    ASSERT_TRUE(cpu::dequantize_avx512(d, w.data<uint8_t>(), fast.data(), 2048) || !cpu::isa_at_least(cpu::Isa::avx512));
    if (!cpu::isa_at_least(cpu::Isa::avx512)) GTEST_SKIP() << "no AVX-512 on this CPU (or FLUXPIPE_ISA below it)";
    to_f32(d, w.data<uint8_t>(), slow.data(), 2048);
    EXPECT_EQ(fast, slow) << name(d);
    // Straight to bf16: the reference values rounded to nearest even, bit for bit.
    if (!cpu::has_dequantize_bf16_avx512(d)) continue;
    std::vector<uint16_t> direct(2048), two_pass(2048);
    ASSERT_TRUE(cpu::dequantize_bf16_avx512(d, w.data<uint8_t>(), direct.data(), 2048));
    cpu::f32_row_to_bf16(slow.data(), two_pass.data(), 2048);
    EXPECT_EQ(direct, two_pass) << name(d) << " to bf16";
  }
}

TEST(Kernels, OneDnnPathMatchesOwnKernels) {
  Ctx c;
  c.compute = Compute::BF16;
  // K = 4608: more than one K chunk of the AMX kernel (C reloaded from memory between them).
  for (DType d : {DType::BF16, DType::F16, DType::Q8_0, DType::Q4_K}) {
    for (auto [M, K] : {std::pair{64, 512}, std::pair{100, 512}, std::pair{70, 4608}}) {
      Tensor x = randn({M, K}, 80 + M), w = convert(randn({300, K}, 81, 0.1f), d);
      cpu::gemm_force_path(cpu::GemmPath::onednn);
      Tensor via_library = ops::linear(c, x, w);
      cpu::gemm_force_path(cpu::GemmPath::own);
      Tensor own = ops::linear(c, x, w);
      cpu::gemm_force_path(cpu::GemmPath::automatic);
      // Both multiply the same bf16 values exactly and accumulate in F32; only the order differs.
      expect_close(via_library, own, 1e-4, 1e-5, std::string("oneDNN vs own, w=") + name(d) + " K=" + std::to_string(K));
      // And the own kernels against the reference fed the same bf16-rounded inputs.
      Tensor want = Tensor::zeros({M, 300}, DType::F32);
      std::vector<float> wf(static_cast<size_t>(300) * K);
      to_f32(d, w.data<uint8_t>(), wf.data(), 300 * K);
      cpu::ref::linear(convert(x, DType::BF16), convert(Tensor::from_floats({300, K}, wf), DType::BF16), nullptr, want);
      expect_close(own, want, 1e-4, 1e-4, std::string("own vs reference, w=") + name(d) + " K=" + std::to_string(K));
    }
  }
}

TEST(Kernels, FastGemmMatchesPortableGemm) {
  for (Compute mode : {Compute::F32, Compute::BF16}) {
    Ctx c;
    c.compute = mode;
    Tensor x = randn({33, 300}, 10), w = convert(randn({130, 300}, 11, 0.1f), DType::BF16);
    Tensor fast = ops::linear(c, x, w);
    cpu::gemm_force_portable(true);
    Tensor slow = ops::linear(c, x, w);
    cpu::gemm_force_portable(false);
    expect_close(fast, slow, 1e-4, 1e-5, std::string("fast vs portable, ") + cpu::gemm_kernel_name(mode));
  }
}

TEST(Kernels, ResultsDoNotDependOnTheThreadCount) {
  Ctx c;
  Tensor x = randn({37, 512}, 12), w = convert(randn({300, 512}, 13, 0.1f), DType::Q8_0);
  Tensor q = randn({1, 3, 70, 16}, 14), k = randn({1, 3, 90, 16}, 15), v = randn({1, 3, 90, 16}, 16);
  // Few column blocks for many rows: our kernels split the rows between threads (M = 200, N = 100).
  cpu::gemm_force_path(cpu::GemmPath::own);
  Tensor xs = randn({200, 512}, 17), ws = convert(randn({100, 512}, 18, 0.1f), DType::Q4_K);
  Ctx cb;
  cb.compute = Compute::BF16;
  ThreadPool::set_global_threads(1);
  Tensor s1 = ops::linear(cb, xs, ws);
  Tensor a1 = ops::linear(c, x, w);
  Tensor t1 = ops::attention(c, q, k, v, 0.25f);
  ThreadPool::set_global_threads(3);
  Tensor s3 = ops::linear(cb, xs, ws);
  Tensor a3 = ops::linear(c, x, w);
  Tensor t3 = ops::attention(c, q, k, v, 0.25f);
  ThreadPool::set_global_threads(0);
  cpu::gemm_force_path(cpu::GemmPath::automatic);
  EXPECT_EQ(s1.to_floats(), s3.to_floats());
  EXPECT_EQ(a1.to_floats(), a3.to_floats());
  EXPECT_EQ(t1.to_floats(), t3.to_floats());
}

TEST(Kernels, AttentionAgainstReference) {
  Ctx c;
  for (int Lq : kSizes) {
    for (int Lk : {1, 17, 65, 130}) {
      Tensor q = randn({2, 2, Lq, 16}, 20), k = randn({2, 2, Lk, 16}, 21), v = randn({2, 2, Lk, 16}, 22);
      Tensor bias = randn({1, 2, Lq, Lk}, 23);
      for (bool causal : {false, true}) {
        for (const Tensor* bp : {static_cast<const Tensor*>(nullptr), static_cast<const Tensor*>(&bias)}) {
          Tensor got = ops::attention(c, q, k, v, 0.25f, bp, causal);
          Tensor want = Tensor::zeros(q.shape(), DType::F32);
          cpu::ref::attention(q, k, v, 0.25f, bp, causal, want);
          expect_close(got, want, 1e-5, 1e-5, "attention Lq=" + std::to_string(Lq) + " Lk=" + std::to_string(Lk));
        }
      }
    }
  }
}

TEST(Kernels, LongSequenceAttentionAgainstReference) {
  // Lq * Lk >= 256^2 takes the per-head path with large parallel products.
  Tensor q = randn({1, 2, 300, 32}, 24), k = randn({1, 2, 260, 32}, 25), v = randn({1, 2, 260, 32}, 26);
  Tensor bias = randn({1, 1, 300, 260}, 27);
  Tensor want = Tensor::zeros(q.shape(), DType::F32);
  cpu::ref::attention(q, k, v, 0.2f, &bias, true, want);
  Ctx c;
  expect_close(ops::attention(c, q, k, v, 0.2f, &bias, true), want, 1e-5, 1e-5, "long attention f32");
  c.compute = Compute::BF16;
  expect_close(ops::attention(c, q, k, v, 0.2f, &bias, true), want, 3e-2, 3e-2, "long attention bf16");
}

TEST(Kernels, FusedAttentionAgainstReference) {
  // No bias and no mask (the FLUX transformer): the fused kernel with each tile product this CPU
  // has (AMX tiles; AVX-512 BF16 dot products, also run at FLUXPIPE_ISA=avx512bf16 on an AMX
  // CPU), with lengths that end mid-chunk and mid-block; the unfused path below those levels.
  Ctx c;
  c.compute = Compute::BF16;
  const cpu::Isa before = cpu::active_isa();
  std::vector<cpu::Isa> levels{before};
  if (before == cpu::Isa::amx) levels.push_back(cpu::Isa::avx512bf16);
  for (cpu::Isa level : levels)
  for (auto [Lq, Lk, D] : {std::tuple<int64_t, int64_t, int64_t>{300, 260, 32}, {257, 300, 64}, {520, 1100, 128}}) {
    cpu::isa_set_for_tests(level);
    Tensor q = randn({1, 3, Lq, D}, 60, 2.0f), k = randn({1, 3, Lk, D}, 61), v = randn({1, 3, Lk, D}, 62);
    Tensor want = Tensor::zeros(q.shape(), DType::F32);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    cpu::ref::attention(q, k, v, scale, nullptr, false, want);
    Tensor got = ops::attention(c, q, k, v, scale);
    expect_close(got, want, 3e-2, 3e-2, "attention bf16 L=" + std::to_string(Lq) + "x" + std::to_string(Lk) + " D=" + std::to_string(D));
    ThreadPool::set_global_threads(1);
    Tensor one = ops::attention(c, q, k, v, scale);
    ThreadPool::set_global_threads(3);
    Tensor three = ops::attention(c, q, k, v, scale);
    ThreadPool::set_global_threads(0);
    EXPECT_EQ(one.to_floats(), three.to_floats()) << "attention must not depend on the thread count";
  }
  cpu::isa_set_for_tests(before);
}

TEST(Kernels, FusedAttentionFollowsAMovingMaximum) {
  // More keys than the fused kernel takes in one chunk (2048), so that chunks are combined
  // online: the first 2048 keys score 0, the rest jump — in head 0 by about 8-10 (natural log),
  // where the earlier keys still carry a fifth of the weight and the partial output must be
  // rescaled; in head 1 by about 150, where probabilities taken against the old maximum would
  // overflow.
  Ctx c;
  c.compute = Compute::BF16;
  const int64_t Lq = 40, Lk = 2300, D = 64;   // Lq * Lk >= 256^2: the long-sequence (fused) path
  Tensor q = randn({1, 2, Lq, D}, 63), k = randn({1, 2, Lk, D}, 64), v = randn({1, 2, Lk, D}, 65);
  float* kp = k.data<float>();
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t j = 0; j < Lk; ++j)
      for (int64_t d = 0; d < D; ++d) kp[(h * Lk + j) * D + d] *= j < 2048 ? 0.0f : h == 0 ? 3.4f : 60.0f;
  // The reference fed the bf16-rounded inputs the kernel multiplies: with scores this large the
  // rounding of K alone moves the result by more than any sane tolerance; what remains is the
  // rounding of the probabilities to bf16 (relative 2^-9).
  Tensor want = Tensor::zeros(q.shape(), DType::F32);
  cpu::ref::attention(convert(q, DType::BF16), convert(k, DType::BF16), convert(v, DType::BF16), 0.125f, nullptr, false, want);
  expect_close(ops::attention(c, q, k, v, 0.125f), want, 1e-2, 1e-2, "attention with a moving maximum");
}

TEST(Kernels, NormsAgainstReference) {
  Ctx c;
  for (int D : kSizes) {
    Tensor x = randn({3, 5, D}, 30, 2.0f), w = randn({D}, 31), b = randn({D}, 32);
    Tensor want = Tensor::zeros(x.shape(), DType::F32);
    cpu::ref::layer_norm(x, &w, &b, 1e-6f, want);
    expect_close(ops::layer_norm(c, x, &w, &b, 1e-6f), want, 1e-5, 1e-5, "layer_norm affine D=" + std::to_string(D));
    cpu::ref::layer_norm(x, nullptr, nullptr, 1e-6f, want);
    expect_close(ops::layer_norm(c, x, nullptr, nullptr, 1e-6f), want, 1e-5, 1e-5, "layer_norm D=" + std::to_string(D));
    cpu::ref::rms_norm(x, &w, 1e-6f, want);
    expect_close(ops::rms_norm(c, x, &w, 1e-6f), want, 1e-5, 1e-5, "rms_norm D=" + std::to_string(D));
    cpu::ref::softmax(x, want);
    expect_close(ops::softmax(c, x), want, 1e-6, 1e-5, "softmax D=" + std::to_string(D));
  }
  for (int C : {32, 64, 96}) {
    Tensor x = randn({2, C, 5, 7}, 33, 3.0f), w = randn({C}, 34), b = randn({C}, 35);
    Tensor want = Tensor::zeros(x.shape(), DType::F32);
    cpu::ref::group_norm(x, 32, &w, &b, 1e-6f, want);
    expect_close(ops::group_norm(c, x, 32, &w, &b, 1e-6f), want, 1e-5, 1e-5, "group_norm C=" + std::to_string(C));
    Tensor want_silu = Tensor::zeros(x.shape(), DType::F32);
    cpu::ref::unary(Unary::silu, want, want_silu);
    expect_close(ops::group_norm(c, x, 32, &w, &b, 1e-6f, true), want_silu, 1e-5, 1e-5, "group_norm+silu C=" + std::to_string(C));
  }
}

TEST(Kernels, ElementwiseAgainstReference) {
  Ctx c;
  for (int n : kSizes) {
    Tensor x = randn({2, n, 3}, 40, 3.0f);
    for (Unary op : {Unary::gelu_tanh, Unary::gelu_erf, Unary::silu, Unary::quick_gelu}) {
      Tensor want = Tensor::zeros(x.shape(), DType::F32);
      cpu::ref::unary(op, x, want);
      Tensor got = op == Unary::gelu_tanh ? ops::gelu_tanh(c, x)
                   : op == Unary::gelu_erf ? ops::gelu_erf(c, x)
                   : op == Unary::silu     ? ops::silu(c, x)
                                           : ops::quick_gelu(c, x);
      expect_close(got, want, 1e-6, 1e-5, "unary n=" + std::to_string(n));
    }
    Tensor a = randn({2, n, 3}, 41), row = randn({3}, 42), col = randn({2, 1, 3}, 43);
    for (const Tensor* b : {static_cast<const Tensor*>(&a), static_cast<const Tensor*>(&row), static_cast<const Tensor*>(&col)}) {
      Tensor want = Tensor::zeros(a.shape(), DType::F32);
      cpu::ref::binary(Binary::add, a, *b, want);
      expect_close(ops::add(c, a, *b), want, 0, 0, "add");
      cpu::ref::binary(Binary::mul, *b, a, want);
      expect_close(ops::mul(c, *b, a), want, 0, 0, "mul broadcast first");
      cpu::ref::binary(Binary::sub, a, *b, want);
      expect_close(ops::sub(c, a, *b), want, 0, 0, "sub");
      cpu::ref::binary(Binary::div, a, *b, want);
      expect_close(ops::div(c, a, *b), want, 0, 1e-6, "div");
    }
  }
}

TEST(Kernels, RopeAgainstReference) {
  Ctx c;
  for (int L : kSizes) {
    Tensor x = randn({2, 3, L, 16}, 50), cs = randn({1, L, 8}, 51), sn = randn({1, L, 8}, 52);
    Tensor want = Tensor::zeros(x.shape(), DType::F32);
    cpu::ref::rope(x, cs, sn, want);
    expect_close(ops::rope(c, x, cs, sn), want, 1e-6, 1e-6, "rope L=" + std::to_string(L));
  }
}

TEST(Kernels, ConvUpsampleConcatAgainstReference) {
  Ctx c;
  for (int hw : {1, 5, 16, 17}) {
    Tensor x = randn({2, 5, hw, hw + 2}, 60);
    for (int k : {1, 3}) {
      Tensor w = randn({7, 5, k, k}, 61, 0.3f), b = randn({7}, 62);
      for (Conv2dParams p : {Conv2dParams{1, k / 2, k / 2, k / 2, k / 2}, Conv2dParams{2, 0, 0, 1, 1}}) {
        if (hw + p.pad_top + p.pad_bottom < k) continue;
        Tensor got = ops::conv2d(c, x, w, &b, p);
        Tensor want = Tensor::zeros(got.shape(), DType::F32);
        cpu::ref::conv2d(x, w, &b, p, want);
        expect_close(got, want, 1e-5, 1e-5, "conv2d k=" + std::to_string(k) + " hw=" + std::to_string(hw));
      }
    }
    Tensor want = Tensor::zeros({2, 5, 2 * hw, 2 * (hw + 2)}, DType::F32);
    cpu::ref::upsample_nearest2x(x, want);
    expect_close(ops::upsample_nearest2x(c, x), want, 0, 0, "upsample");
  }
  // The BF16 path (oneDNN convolution) against the reference fed bf16-rounded inputs.
  Ctx cb;
  cb.compute = Compute::BF16;
  Tensor x = randn({1, 8, 9, 11}, 65), w = randn({6, 8, 3, 3}, 66, 0.2f), b3 = randn({6}, 67);
  for (Conv2dParams p : {Conv2dParams{1, 1, 1, 1, 1}, Conv2dParams{2, 0, 0, 1, 1}}) {
    Tensor got = ops::conv2d(cb, x, w, &b3, p);
    Tensor want = Tensor::zeros(got.shape(), DType::F32);
    cpu::ref::conv2d(convert(x, DType::BF16), convert(w, DType::BF16), &b3, p, want);
    expect_close(got, want, 1e-4, 1e-4, "conv2d bf16 stride " + std::to_string(p.stride));
  }
  Tensor a = randn({2, 3, 4}, 63), b = randn({2, 5, 4}, 64);
  Tensor want = Tensor::zeros({2, 8, 4}, DType::F32);
  cpu::ref::concat({a, b}, 1, want);
  expect_close(ops::concat(c, {a, b}, 1), want, 0, 0, "concat");
}

// The attention inputs in one pass (the CPU's qkv_heads) against the ops it replaces, one after
// another (the Backend's default, which other backends run): bit for bit, for one stream and for
// two joined along L, RoPE tables per batch and shared.
TEST(Kernels, QkvHeadsInOnePassEqualTheOpsOneAfterAnother) {
  Ctx c;
  const int64_t B = 2, heads = 3, hd = 8, H = heads * hd;
  Tensor txt = randn({B, 5, 3 * H}, 90, 2.0f), img = randn({B, 7, 3 * H}, 91, 2.0f);
  Tensor tq = randn({hd}, 92), tk = randn({hd}, 93), iq = randn({hd}, 94), ik = randn({hd}, 95);
  auto by_ops = [&](const std::vector<QkvPart>& parts, const Tensor& cs, const Tensor& sn) {
    std::vector<Tensor> qs, ks, vs;
    for (const QkvPart& p : parts) {
      const int64_t L = p.qkv.size(1);
      Tensor t = ops::contiguous(c, p.qkv.reshape({B, L, 3, heads, hd}).permute({2, 0, 3, 1, 4}));
      qs.push_back(ops::rms_norm(c, t.slice(0, 0, 1).reshape({B, heads, L, hd}), &p.q_scale, 1e-6f));
      ks.push_back(ops::rms_norm(c, t.slice(0, 1, 1).reshape({B, heads, L, hd}), &p.k_scale, 1e-6f));
      vs.push_back(ops::contiguous(c, t.slice(0, 2, 1).reshape({B, heads, L, hd})));
    }
    auto cat = [&](const std::vector<Tensor>& xs) { return xs.size() == 1 ? xs[0] : ops::concat(c, xs, 2); };
    return std::array<Tensor, 3>{ops::rope(c, cat(qs), cs, sn), ops::rope(c, cat(ks), cs, sn), cat(vs)};
  };
  for (int64_t tables : {int64_t{1}, B}) {
    for (bool joint : {true, false}) {
      std::vector<QkvPart> parts{{img, iq, ik}};
      if (joint) parts.insert(parts.begin(), QkvPart{txt, tq, tk});
      const int64_t L = joint ? 12 : 7;
      Tensor cs = randn({tables, L, hd / 2}, 96), sn = randn({tables, L, hd / 2}, 97);
      const std::string what = std::string(joint ? "txt + img" : "img") + ", tables for " + std::to_string(tables);
      auto got = ops::qkv_heads(c, parts, heads, cs, sn, 1e-6f);
      auto want = by_ops(parts, cs, sn);
      Tensor dq = Tensor::empty(got[0].shape(), DType::F32), dk = Tensor::empty(got[0].shape(), DType::F32),
             dv = Tensor::empty(got[0].shape(), DType::F32);
      c.backend->Backend::qkv_heads(parts, cs, sn, 1e-6f, dq, dk, dv);   // the default, on the CPU's ops
      for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(got[i].shape(), (Shape{B, heads, L, hd})) << what;
        EXPECT_EQ(got[i].to_floats(), want[i].to_floats()) << what << ", output " << i;
      }
      EXPECT_EQ(dq.to_floats(), want[0].to_floats()) << what << ": the default";
      EXPECT_EQ(dk.to_floats(), want[1].to_floats()) << what << ": the default";
      EXPECT_EQ(dv.to_floats(), want[2].to_floats()) << what << ": the default";
    }
  }
  EXPECT_THROW(ops::qkv_heads(c, {{randn({B, 5, 3 * H + 2}, 98), tq, tk}}, heads, randn({1, 5, 4}, 99), randn({1, 5, 4}, 99), 1e-6f),
               fluxpipe::UserError);
  EXPECT_THROW(ops::qkv_heads(c, {{txt, tq, tk}}, heads, randn({1, 6, 4}, 99), randn({1, 6, 4}, 99), 1e-6f), fluxpipe::UserError);
}

// The channels-last (nhwc) image ops the autoencoder computes in on the CPU, against the nchw
// reference on the same values transposed: group norm (channel counts on and off the 16-lane
// path, several 256-pixel chunks, the same bits for any thread count), upsampling, and the
// convolutions in F32 (the im2col path) and BF16 (oneDNN, nhwc its own layout: no transposes).
TEST(Kernels, ChannelsLastImageOpsEqualTheNchwOnes) {
  Ctx c;
  auto to_nhwc = [&](const Tensor& t) { return ops::contiguous(c, t.permute({0, 2, 3, 1})); };
  auto to_nchw = [&](const Tensor& t) { return ops::contiguous(c, t.permute({0, 3, 1, 2})); };
  ASSERT_TRUE(c.backend->has_nhwc());
  EXPECT_EQ(ops::image_layout(c), Layout::nhwc);
  for (auto [C, groups] : {std::pair{32, 32}, std::pair{40, 8}, std::pair{128, 32}}) {
    Tensor x = randn({2, C, 24, 23}, 70, 3.0f), w = randn({C}, 71), b = randn({C}, 72);
    x = ops::add(c, x, ops::constant(c, {1}, {5.0f}));   // a mean far from zero: the two-pass variance matters
    Tensor want = Tensor::zeros(x.shape(), DType::F32), want_silu = Tensor::zeros(x.shape(), DType::F32);
    cpu::ref::group_norm(x, groups, &w, &b, 1e-6f, want);
    cpu::ref::unary(Unary::silu, want, want_silu);
    const std::string what = "group_norm nhwc C=" + std::to_string(C);
    Tensor got = ops::group_norm(c, to_nhwc(x), groups, &w, &b, 1e-6f, false, Layout::nhwc);
    ASSERT_EQ(got.shape(), (Shape{2, 24, 23, C}));
    expect_close(to_nchw(got), want, 1e-5, 1e-5, what);
    ThreadPool::set_global_threads(1);
    Tensor one = ops::group_norm(c, to_nhwc(x), groups, &w, &b, 1e-6f, true, Layout::nhwc);
    ThreadPool::set_global_threads(3);
    Tensor three = ops::group_norm(c, to_nhwc(x), groups, &w, &b, 1e-6f, true, Layout::nhwc);
    ThreadPool::set_global_threads(0);
    expect_close(to_nchw(one), want_silu, 1e-5, 1e-5, what + " + silu");
    EXPECT_EQ(std::memcmp(one.data<float>(), three.data<float>(), one.nbytes()), 0) << what << ": 1 and 3 threads differ";
  }
  Tensor x = randn({2, 5, 7, 9}, 73);
  Tensor up = Tensor::zeros({2, 5, 14, 18}, DType::F32);
  cpu::ref::upsample_nearest2x(x, up);
  expect_close(to_nchw(ops::upsample_nearest2x(c, to_nhwc(x), Layout::nhwc)), up, 0, 0, "upsample nhwc");

  Ctx cb;
  cb.compute = Compute::BF16;
  Tensor xi = randn({2, 16, 9, 11}, 74);
  for (int k : {1, 3}) {
    Tensor w = randn({24, 16, k, k}, 75, 0.2f), b = randn({24}, 76);
    for (Conv2dParams p : {Conv2dParams{1, k / 2, k / 2, k / 2, k / 2}, Conv2dParams{2, 0, 0, 1, 1}}) {
      const std::string what = "conv2d nhwc k=" + std::to_string(k) + " stride " + std::to_string(p.stride);
      Tensor nchw = ops::conv2d(c, xi, w, &b, p);
      Conv2dParams pl = p;
      pl.layout = Layout::nhwc;
      Tensor got = ops::conv2d(c, to_nhwc(xi), w, &b, pl);
      ASSERT_EQ(got.shape(), (Shape{nchw.size(0), nchw.size(2), nchw.size(3), nchw.size(1)})) << what;
      expect_close(to_nchw(got), nchw, 0, 0, what + " F32 (the nchw path, transposed)");
      Tensor want = Tensor::zeros(nchw.shape(), DType::F32);
      cpu::ref::conv2d(convert(xi, DType::BF16), convert(w, DType::BF16), &b, p, want);
      expect_close(to_nchw(ops::conv2d(cb, to_nhwc(xi), w, &b, pl)), want, 1e-4, 1e-4, what + " bf16");
    }
  }
}

TEST(Ops, ErrorsNameTheOpAndShapes) {
  Ctx c;
  Tensor x = randn({4, 30}, 1), w = randn({64, 32}, 2);
  try {
    ops::linear(c, x, w);
    ADD_FAILURE();
  } catch (const std::exception& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("[linear]"), std::string::npos) << m;
    EXPECT_NE(m.find("F32[4, 30]"), std::string::npos) << m;
    EXPECT_NE(m.find("F32[64, 32]"), std::string::npos) << m;
  }
  EXPECT_THROW(ops::group_norm(c, randn({1, 30, 2, 2}, 3), 32, nullptr, nullptr, 1e-6f), std::exception);
  EXPECT_THROW(ops::group_norm(c, randn({1, 2, 2, 30}, 3), 32, nullptr, nullptr, 1e-6f, false, Layout::nhwc), std::exception);
  Conv2dParams nhwc;
  nhwc.layout = Layout::nhwc;
  EXPECT_THROW(ops::conv2d(c, randn({1, 4, 4, 3}, 9), randn({2, 4, 1, 1}, 10), nullptr, nhwc), std::exception);
  EXPECT_THROW(ops::add(c, randn({2, 3}, 4), randn({4}, 5)), std::exception);
  EXPECT_THROW(ops::attention(c, randn({1, 2, 3, 4}, 6), randn({1, 2, 3, 8}, 7), randn({1, 2, 3, 8}, 8), 1.0f), std::exception);
}

TEST(Arena, ReusesMemoryAcrossPasses) {
  Arena arena;
  Ctx c;
  c.arena = &arena;
  Tensor x = randn({16, 64}, 1), w = randn({64, 64}, 2);
  for (int pass = 0; pass < 3; ++pass) {
    Tensor y = ops::linear(c, x, w);
    for (int i = 0; i < 5; ++i) y = ops::gelu_tanh(c, y);
    EXPECT_EQ(y.shape(), (Shape{16, 64}));
    if (pass == 0) {
      EXPECT_GT(arena.peak(), 0u);
    }
    size_t cap = arena.capacity();
    arena.reset();
    EXPECT_EQ(arena.used(), 0u);
    if (pass > 0) {
      EXPECT_EQ(arena.capacity(), cap);
    }
  }
}

}  // namespace
}  // namespace fluxpipe
