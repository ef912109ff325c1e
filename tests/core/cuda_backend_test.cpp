// The CUDA backend against the CPU backend: every op on random data at awkward sizes (1, 15,
// 16, 17, 31, 33) and FLUX's real widths, for every dtype the op takes, within the tolerance
// table below. Skipped, with the reason, where no CUDA GPU can be used; the test that `--device
// cuda` fails clearly runs everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "gpu.h"
#include "ops/ops.h"
#include "random_tensors.h"

namespace fluxpipe {
namespace {

// How far the GPU may be from the CPU, as a fraction of the CPU result's largest magnitude:
// - exact: conversions and copies (the same arithmetic, or none);
// - f32: the same F32 arithmetic summed in another order (products over up to 3072 terms) or
//   another libm's exp/tanh/erf (1-2 ulp);
// - bf16: both round the operands to bf16 the same way and differ in summation order, except
//   that a CPU without bf16 instructions may take integer products for Q8_0/Q4_0 weights, and
//   a quantized weight rounds to bf16 on the GPU (hence the looser `quant`).
struct Tolerance {
  double exact = 1e-7, f32 = 3e-5, bf16 = 1e-2, quant = 3e-2;
};
constexpr Tolerance kTol{};

using testing::convert;
using testing::randn;

struct Gpu {
  Ctx c;
  explicit Gpu(Compute compute = Compute::F32) {
    c.backend = &cuda_backend(0);
    c.compute = compute;
  }
  Tensor up(const Tensor& t) { return ops::to_device(c, t); }
  Tensor down(const Tensor& t) { return ops::to_host(c, t); }
};

Ctx cpu_ctx(Compute compute = Compute::F32) {
  Ctx c;
  c.compute = compute;
  return c;
}

// max |gpu - cpu| <= tol * max |cpu| (+ a floor for all-zero results).
void expect_near(const Tensor& gpu_on_host, const Tensor& cpu, double tol, const std::string& what) {
  ASSERT_EQ(gpu_on_host.device(), Device::CPU) << what;
  ASSERT_EQ(gpu_on_host.shape(), cpu.shape()) << what << ": " << gpu_on_host.describe() << " vs " << cpu.describe();
  std::vector<float> a = gpu_on_host.to_floats(), b = cpu.to_floats();
  double max_ref = 0, max_diff = 0;
  size_t worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
    double d = a[i] == b[i] ? 0.0 : std::fabs(static_cast<double>(a[i]) - b[i]);
    if (std::isnan(d)) d = INFINITY;
    if (d > max_diff) max_diff = d, worst = i;
  }
  EXPECT_LE(max_diff, tol * max_ref + 1e-30) << what << ": worst at " << worst << " gpu " << a[worst] << " cpu " << b[worst]
                                             << " (max |cpu| " << max_ref << ", tolerance " << tol << ")";
}

const int kAwkward[] = {1, 15, 16, 17, 31, 33};

TEST(CudaDevice, WithoutAGpuCudaIsRefusedClearly) {
  std::string why = testing::gpu_absent_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA GPU is present: this checks the machines without one";
  try {
    cuda_backend(0);
    FAIL() << "cuda_backend(0) returned without a GPU";
  } catch (const UserError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
    EXPECT_NE(m.find(why), std::string::npos) << m;
  }
}

TEST(CudaOps, TransfersAndZeroRoundTrip) {
  FLUXPIPE_NEED_GPU();
  Gpu g;
  for (int n : kAwkward) {
    Tensor x = randn({n, 3}, static_cast<uint32_t>(n));
    expect_near(g.down(g.up(x)), x, 0, "round trip " + std::to_string(n));
    Tensor z = ops::zeros(g.c, {n, 3}, DType::F32);
    expect_near(g.down(z), Tensor::zeros({n, 3}, DType::F32), 0, "zeros");
  }
}

TEST(CudaOps, LinearMatchesTheCpuForEveryWeightDtype) {
  FLUXPIPE_NEED_GPU();
  const DType dense[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::F8_E5M2};
  const DType blocks[] = {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q6_K};
  struct Size { int M, K, N; };
  std::vector<Size> sizes;
  for (int a : kAwkward) sizes.push_back({a, 256, 17}), sizes.push_back({3, 256, a});
  sizes.push_back({33, 3072, 3072});   // FLUX's hidden width
  sizes.push_back({2, 3072, 18432});   // a modulation (M = batch) at the real width
  for (Compute comp : {Compute::F32, Compute::BF16}) {
    Gpu g(comp);
    Ctx c = cpu_ctx(comp);
    auto check = [&](DType wt, const Size& s, bool bias) {
      Tensor x = randn({s.M, s.K}, 1), w = convert(randn({s.N, s.K}, 2, 0.05f), wt), b = randn({s.N}, 3);
      Tensor want = ops::linear(c, x, w, bias ? &b : nullptr);
      Tensor gw = g.up(w), gb = g.up(b);
      Tensor got = g.down(ops::linear(g.c, g.up(x), gw, bias ? &gb : nullptr));
      double tol = comp == Compute::F32 ? kTol.f32 : (is_quantized(wt) ? kTol.quant : kTol.bf16);
      expect_near(got, want, tol, std::string("linear ") + name(wt) + (comp == Compute::BF16 ? " bf16" : " f32") + " M" +
                                      std::to_string(s.M) + " K" + std::to_string(s.K) + " N" + std::to_string(s.N));
    };
    for (const Size& s : sizes) check(DType::BF16, s, true);
    for (DType wt : dense) check(wt, {17, 96, 33}, wt == DType::F16);
    for (DType wt : blocks) check(wt, {17, 512, 33}, false), check(wt, {1, 3072, 64}, true);
    // BF16 activations into the product (the CPU takes them too).
    Tensor xb = convert(randn({5, 64}, 4), DType::BF16), w = convert(randn({7, 64}, 5), DType::BF16);
    expect_near(g.down(ops::linear(g.c, g.up(xb), g.up(w))), ops::linear(c, xb, w), comp == Compute::F32 ? kTol.f32 : kTol.bf16,
                "linear with bf16 x");
  }
}

TEST(CudaOps, AttentionMatchesTheCpuWithBiasAndCausalMask) {
  FLUXPIPE_NEED_GPU();
  struct Case { int B, H, Lq, Lk, D; bool bias, causal; };
  std::vector<Case> cases;
  for (int l : kAwkward) cases.push_back({1, 2, l, l, 64, false, false});
  cases.push_back({2, 3, 17, 33, 128, true, false});   // a [B, H, Lq, Lk] bias (T5)
  cases.push_back({1, 2, 33, 33, 64, false, true});    // CLIP's causal mask
  cases.push_back({1, 24, 512 + 256, 512 + 256, 128, false, false});   // FLUX at 256² with 256 text tokens
  for (Compute comp : {Compute::F32, Compute::BF16}) {
    Gpu g(comp);
    Ctx c = cpu_ctx(comp);
    for (const Case& k : cases) {
      Tensor q = randn({k.B, k.H, k.Lq, k.D}, 1), kk = randn({k.B, k.H, k.Lk, k.D}, 2), v = randn({k.B, k.H, k.Lk, k.D}, 3);
      Tensor bias = randn({k.B, k.H, k.Lq, k.Lk}, 4);
      const float scale = 1.0f / std::sqrt(static_cast<float>(k.D));
      Tensor want = ops::attention(c, q, kk, v, scale, k.bias ? &bias : nullptr, k.causal);
      Tensor gbias = g.up(bias);
      Tensor got = g.down(ops::attention(g.c, g.up(q), g.up(kk), g.up(v), scale, k.bias ? &gbias : nullptr, k.causal));
      expect_near(got, want, comp == Compute::F32 ? kTol.f32 : kTol.bf16,
                  "attention L" + std::to_string(k.Lq) + "x" + std::to_string(k.Lk) + " D" + std::to_string(k.D) +
                      (k.bias ? " bias" : "") + (k.causal ? " causal" : "") + (comp == Compute::BF16 ? " bf16" : " f32"));
    }
  }
}

TEST(CudaOps, NormsAndModulationMatchTheCpu) {
  FLUXPIPE_NEED_GPU();
  Gpu g;
  Ctx c = cpu_ctx();
  std::vector<int> widths(std::begin(kAwkward), std::end(kAwkward));
  widths.push_back(3072);
  for (int D : widths) {
    Tensor x = randn({3, 5, D}, 1, 2.0f), w = randn({D}, 2), b = randn({D}, 3);
    Tensor wb = convert(w, DType::BF16);
    Tensor gx = g.up(x), gw = g.up(w), gbv = g.up(b), gwb = g.up(wb);
    std::string at = " D" + std::to_string(D);
    expect_near(g.down(ops::layer_norm(g.c, gx, &gw, &gbv, 1e-6f)), ops::layer_norm(c, x, &w, &b, 1e-6f), kTol.f32, "layer_norm" + at);
    expect_near(g.down(ops::layer_norm(g.c, gx, nullptr, nullptr, 1e-6f)), ops::layer_norm(c, x, nullptr, nullptr, 1e-6f), kTol.f32,
                "layer_norm (no affine)" + at);
    expect_near(g.down(ops::rms_norm(g.c, gx, &gwb, 1e-6f)), ops::rms_norm(c, x, &wb, 1e-6f), kTol.f32, "rms_norm (bf16 weight)" + at);
    Tensor shift = randn({3, 1, D}, 4), scale = randn({3, 1, D}, 5), y = randn({3, 5, D}, 6);
    Tensor gs = g.up(shift), gsc = g.up(scale), gy = g.up(y);
    expect_near(g.down(ops::layer_norm_modulate(g.c, gx, gs, gsc, 1e-6f)), ops::layer_norm_modulate(c, x, shift, scale, 1e-6f), kTol.f32,
                "layer_norm_modulate" + at);
    expect_near(g.down(ops::add_gated(g.c, gx, gsc, gy)), ops::add_gated(c, x, scale, y), kTol.f32, "add_gated" + at);
  }
  for (auto [C, HW, groups] : {std::tuple{32, 17, 32}, std::tuple{64, 33 * 31, 32}, std::tuple{512, 64 * 64, 32}}) {
    Tensor x = randn({2, C, HW, 1}, 7, 3.0f), w = randn({C}, 8), b = randn({C}, 9);
    Tensor gw = g.up(w), gb = g.up(b);
    for (bool silu : {false, true}) {
      expect_near(g.down(ops::group_norm(g.c, g.up(x), groups, &gw, &gb, 1e-6f, silu)), ops::group_norm(c, x, groups, &w, &b, 1e-6f, silu),
                  kTol.f32, "group_norm C" + std::to_string(C) + (silu ? " + silu" : ""));
    }
  }
}

TEST(CudaOps, ElementwiseSoftmaxAndRopeMatchTheCpu) {
  FLUXPIPE_NEED_GPU();
  Gpu g;
  Ctx c = cpu_ctx();
  for (int n : kAwkward) {
    Tensor x = randn({n, 3, 7}, static_cast<uint32_t>(n), 3.0f);
    Tensor gx = g.up(x);
    std::string at = " n" + std::to_string(n);
    expect_near(g.down(ops::gelu_tanh(g.c, gx)), ops::gelu_tanh(c, x), kTol.f32, "gelu_tanh" + at);
    expect_near(g.down(ops::gelu_erf(g.c, gx)), ops::gelu_erf(c, x), kTol.f32, "gelu_erf" + at);
    expect_near(g.down(ops::silu(g.c, gx)), ops::silu(c, x), kTol.f32, "silu" + at);
    expect_near(g.down(ops::quick_gelu(g.c, gx)), ops::quick_gelu(c, x), kTol.f32, "quick_gelu" + at);
    expect_near(g.down(ops::softmax(g.c, gx)), ops::softmax(c, x), kTol.f32, "softmax" + at);
    // Broadcasts: a row, a column, a scalar, the same shape.
    for (const Shape& bs : {Shape{n, 3, 7}, Shape{7}, Shape{n, 1, 1}, Shape{1}, Shape{3, 1}}) {
      Tensor b = randn(bs, 11, 1.0f);
      std::vector<float> bv = b.to_floats();
      for (float& f : bv) f = f + (f >= 0 ? 0.5f : -0.5f);   // no division by values near zero
      b = Tensor::from_floats(bs, bv);
      Tensor gb = g.up(b);
      expect_near(g.down(ops::add(g.c, gx, gb)), ops::add(c, x, b), kTol.exact, "add " + shape_str(bs) + at);
      expect_near(g.down(ops::sub(g.c, gb, gx)), ops::sub(c, b, x), kTol.exact, "sub " + shape_str(bs) + at);
      expect_near(g.down(ops::mul(g.c, gx, gb)), ops::mul(c, x, b), kTol.exact, "mul " + shape_str(bs) + at);
      expect_near(g.down(ops::div(g.c, gx, gb)), ops::div(c, x, b), kTol.exact, "div " + shape_str(bs) + at);
    }
  }
  // RoPE with tables shared across the batch and per batch, at FLUX's head width.
  for (int L : {1, 17, 33}) {
    Tensor x = randn({2, 3, L, 128}, 12);
    for (int tb : {1, 2}) {
      Tensor cs = randn({tb, L, 64}, 13), sn = randn({tb, L, 64}, 14);
      expect_near(g.down(ops::rope(g.c, g.up(x), g.up(cs), g.up(sn))), ops::rope(c, x, cs, sn), kTol.f32,
                  "rope L" + std::to_string(L) + " tables " + std::to_string(tb));
    }
  }
}

TEST(CudaOps, ConvolutionUpsampleConcatAndCopyMatchTheCpu) {
  FLUXPIPE_NEED_GPU();
  struct Conv { int Cin, H, W, Cout, k; Conv2dParams p; };
  const Conv convs[] = {{3, 17, 15, 16, 3, {1, 1, 1, 1, 1}}, {16, 33, 31, 17, 3, {2, 0, 0, 1, 1}},   // the encoder's downsample
                        {33, 16, 16, 31, 1, {}},                                                       // 1x1
                        {128, 64, 64, 128, 3, {1, 1, 1, 1, 1}}};                                       // a decoder layer
  for (Compute comp : {Compute::F32, Compute::BF16}) {
    Gpu g(comp);
    Ctx c = cpu_ctx(comp);
    for (const Conv& k : convs) {
      for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
        Tensor x = randn({2, k.Cin, k.H, k.W}, 1), w = convert(randn({k.Cout, k.Cin, k.k, k.k}, 2, 0.1f), wt), b = randn({k.Cout}, 3);
        Tensor gw = g.up(w), gb = g.up(b);
        expect_near(g.down(ops::conv2d(g.c, g.up(x), gw, &gb, k.p)), ops::conv2d(c, x, w, &b, k.p), comp == Compute::F32 ? kTol.f32 : kTol.bf16,
                    "conv2d " + std::to_string(k.Cin) + "->" + std::to_string(k.Cout) + " k" + std::to_string(k.k) + " " + name(wt) +
                        (comp == Compute::BF16 ? " bf16" : " f32"));
      }
    }
  }
  Gpu g;
  Ctx c = cpu_ctx();
  Tensor x = randn({2, 3, 17, 15}, 4);
  expect_near(g.down(ops::upsample_nearest2x(g.c, g.up(x))), ops::upsample_nearest2x(c, x), kTol.exact, "upsample");
  for (int dim : {0, 1, 2, 3}) {
    Tensor a = randn({2, 3, 5, 7}, 5), b = randn({2, 3, 5, 7}, 6);
    Shape sb = a.shape();
    sb[static_cast<size_t>(dim)] = 1;
    Tensor bb = randn(sb, 7);
    expect_near(g.down(ops::concat(g.c, {g.up(a), g.up(bb), g.up(b)}, dim)), ops::concat(c, {a, bb, b}, dim), kTol.exact,
                "concat dim " + std::to_string(dim));
  }
  // Strided views (a permute, a slice) made contiguous, and dtype conversions.
  Tensor y = randn({2, 3, 4, 5, 6}, 8);
  Tensor gy = g.up(y);
  expect_near(g.down(ops::contiguous(g.c, gy.permute({0, 2, 4, 1, 3}))), ops::contiguous(c, y.permute({0, 2, 4, 1, 3})), kTol.exact, "permute");
  expect_near(g.down(ops::contiguous(g.c, gy.slice(3, 1, 3))), ops::contiguous(c, y.slice(3, 1, 3)), kTol.exact, "slice");
  for (DType to : {DType::BF16, DType::F16}) {
    expect_near(g.down(ops::to_dtype(g.c, gy, to)), ops::to_dtype(c, y, to), kTol.exact, std::string("F32 -> ") + name(to));
  }
  // Every block type and dense dtype to F32, bit for bit with the CPU's decoder (random bytes
  // for the types fluxpipe cannot encode, with sane scales).
  std::mt19937 rng(9);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K,
                  DType::Q6_K, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2}) {
    const int64_t n = 3 * 256;
    Tensor q = Tensor::zeros({3, 256}, t);
    if (can_encode(t)) {
      q = convert(randn({3, 256}, 10), t);
    } else {
      for (size_t i = 0; i < q.nbytes(); ++i) q.data<uint8_t>()[i] = static_cast<uint8_t>(rng());
      const int bb = info(t).block_bytes;
      const uint16_t d = f32_to_f16(0.01f);
      for (int64_t blk = 0; blk < n / 256; ++blk) {
        uint8_t* base = q.data<uint8_t>() + blk * bb;
        std::vector<int> at = t == DType::Q2_K ? std::vector<int>{80, 82} : t == DType::Q3_K ? std::vector<int>{108} : std::vector<int>{0, 2};
        for (int o : at) std::memcpy(base + o, &d, 2);
      }
    }
    expect_near(g.down(ops::to_dtype(g.c, g.up(q), DType::F32)), ops::to_dtype(c, q, DType::F32), kTol.exact, std::string(name(t)) + " -> F32");
  }
}

TEST(CudaOps, TablesEmbeddingAndImageOpsMatchTheCpu) {
  FLUXPIPE_NEED_GPU();
  Gpu g;
  Ctx c = cpu_ctx();
  Tensor ids = Tensor::from_floats({2, 5}, {0, 3, 99, 17, 4, 5, 6, 7, 8, 1});
  for (DType t : {DType::F32, DType::BF16, DType::Q8_0, DType::Q4_K}) {
    Tensor table = convert(randn({100, 256}, 1), t);
    expect_near(g.down(ops::embedding(g.c, g.up(table), ids)), ops::embedding(c, table, ids), kTol.exact, std::string("embedding ") + name(t));
  }
  Tensor hidden = randn({2, 5, 33}, 2);
  expect_near(g.down(ops::gather_rows_at_argmax(g.c, g.up(hidden), ids)), ops::gather_rows_at_argmax(c, hidden, ids), kTol.exact,
              "gather_rows_at_argmax");
  Tensor rel = randn({32, 6}, 3), mask = Tensor::from_floats({2, 17}, std::vector<float>(34, 1.0f));
  mask.data<float>()[20] = 0.0f;
  for (const Tensor* m : {static_cast<const Tensor*>(nullptr), static_cast<const Tensor*>(&mask)}) {
    expect_near(g.down(ops::t5_position_bias(g.c, g.up(rel), 17, 17, 128, m)), ops::t5_position_bias(c, rel, 17, 17, 128, m), kTol.exact,
                m ? "t5_position_bias (mask)" : "t5_position_bias");
  }
  // The arguments reach 1000 rad: a 1-ulp difference in exp() moves cos by ~6e-5.
  Tensor t = Tensor::from_floats({3}, {1.0f, 0.5f, 0.0313f});
  expect_near(g.down(ops::timestep_embedding(g.c, g.up(t), 256)), ops::timestep_embedding(c, t, 256), 1e-4,
              "timestep_embedding");
  Tensor pos = randn({2, 33, 3}, 4, 20.0f);
  auto [gc, gs] = ops::rope_tables(g.c, g.up(pos), {16, 56, 56}, 10000.0);
  auto [cc, cs] = ops::rope_tables(c, pos, {16, 56, 56}, 10000.0);
  expect_near(g.down(gc), cc, 1e-6, "rope_tables cos");
  expect_near(g.down(gs), cs, 1e-6, "rope_tables sin");
  Tensor img = randn({2, 3, 17, 15}, 5, 0.7f);
  expect_near(g.down(ops::to_u8(g.c, g.up(img))), ops::to_u8(c, img), 1.0 / 255.0 + 1e-9, "to_u8 (a value on a rounding edge may differ by one)");
  Tensor tile = randn({1, 3, 8, 16}, 6), wy = randn({8}, 7), wx = randn({16}, 8);
  Tensor acc = randn({2, 3, 24, 40}, 9), wsum = randn({24, 40}, 10);
  Tensor gacc = g.up(acc), gwsum = g.up(wsum);
  ops::blend_tile(g.c, g.up(tile), g.up(wy), g.up(wx), 1, 5, 7, gacc, &gwsum);
  ops::blend_tile(c, tile, wy, wx, 1, 5, 7, acc, &wsum);
  expect_near(g.down(gacc), acc, kTol.f32, "blend_tile acc");
  expect_near(g.down(gwsum), wsum, kTol.f32, "blend_tile wsum");
}

TEST(CudaOps, AnOpGivenAHostTensorNamesIt) {
  FLUXPIPE_NEED_GPU();
  Gpu g;
  Tensor x = randn({2, 3}, 1);
  try {
    ops::silu(g.c, x);
    FAIL() << "silu took a host tensor in a GPU context";
  } catch (const UserError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("[silu] x"), std::string::npos) << m;
    EXPECT_NE(m.find("on the host"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace fluxpipe
