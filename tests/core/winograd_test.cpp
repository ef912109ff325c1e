// The Winograd F(4x4, 3x3) convolution (backend/cpu/winograd.h) against the plain
// double-precision convolution: sizes that are and are not multiples of the 4 x 4 tile, every
// padding the autoencoders use and asymmetric ones, both vector widths, with and without the bf16
// rounding, the same bits run after run, and the backend taking it only when switched on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cpu/isa.h"
#include "backend/cpu/reference.h"
#include "backend/cpu/winograd.h"
#include "core/thread_pool.h"
#include "ops/ops.h"
#include "random_tensors.h"

namespace fluxpipe {
namespace {

using testing::convert;
using testing::randn;

Tensor to_nhwc(const Tensor& t) {
  Ctx c;
  return ops::contiguous(c, t.permute({0, 2, 3, 1}));
}

// max |got - want| over max |want| (the F(4x4, 3x3) transforms' rounding is relative to the
// output's scale, not to each value).
double scaled_error(const Tensor& got, const Tensor& want) {
  std::vector<float> a = got.to_floats(), b = want.to_floats();
  EXPECT_EQ(a.size(), b.size());
  double scale = 0, diff = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    diff = std::isfinite(d) ? std::max(diff, d) : INFINITY;
  }
  return diff / std::max(scale, 1e-30);
}

Tensor winograd(const Tensor& x_nhwc, const Tensor& w, const Tensor* b, const Conv2dParams& p, int64_t OH, int64_t OW, bool round) {
  Tensor out = Tensor::empty({x_nhwc.size(0), OH, OW, w.size(0)}, DType::F32);
  EXPECT_TRUE(cpu::winograd_applies(x_nhwc, w, p, out));
  cpu::winograd_conv3x3(x_nhwc, w, b, p, out, round);
  return out;
}

struct Case {
  int64_t B, Ci, Co, H, W;
  Conv2dParams p;
};

TEST(Winograd, ConvolutionsEqualThePlainOneAtEverySizeAndPadding) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "the Winograd convolution needs AVX2 + FMA";
  cpu::winograd_force(1);
  const cpu::Isa before = cpu::active_isa();
  std::vector<cpu::Isa> levels{before};
  if (before != cpu::Isa::avx2) levels.push_back(cpu::Isa::avx2);   // the 8-lane copy on AVX-512 machines too
  const Case cases[] = {
      {2, 16, 24, 9, 11, {1, 1, 1, 1, 1}},    // 8 lanes only (24), ragged tiles
      {1, 32, 48, 16, 12, {1, 1, 1, 1, 1}},   // 16 lanes where there are, whole tiles
      {1, 8, 16, 1, 1, {1, 1, 1, 1, 1}},      // one pixel
      {1, 16, 16, 7, 10, {1, 0, 0, 0, 0}},    // no padding: 5 x 8 out
      {2, 32, 16, 6, 9, {1, 0, 1, 2, 1}},     // asymmetric padding
      {1, 64, 32, 13, 5, {1, 2, 2, 2, 2}},    // padding 2: out larger than in
  };
  for (cpu::Isa level : levels) {
    cpu::isa_set_for_tests(level);
    for (const Case& k : cases) {
      Tensor x = randn({k.B, k.Ci, k.H, k.W}, 900 + k.Ci + k.H, 2.0f), w = randn({k.Co, k.Ci, 3, 3}, 901 + k.Co, 0.2f);
      Tensor b = randn({k.Co}, 902);
      x = convert(convert(x, DType::BF16), DType::F32);   // exact bf16 values: both roundings alike
      const int64_t OH = k.H + k.p.pad_top + k.p.pad_bottom - 2, OW = k.W + k.p.pad_left + k.p.pad_right - 2;
      Tensor want = Tensor::zeros({k.B, k.Co, OH, OW}, DType::F32), want_bf16 = Tensor::zeros({k.B, k.Co, OH, OW}, DType::F32);
      cpu::ref::conv2d(x, w, &b, k.p, want);
      cpu::ref::conv2d(x, convert(w, DType::BF16), &b, k.p, want_bf16);
      const std::string what = std::string(cpu::isa_name(level)) + " B" + std::to_string(k.B) + " Ci" + std::to_string(k.Ci) +
                               " Co" + std::to_string(k.Co) + " " + std::to_string(k.H) + "x" + std::to_string(k.W) + " pad " +
                               std::to_string(k.p.pad_top) + std::to_string(k.p.pad_left) + std::to_string(k.p.pad_bottom) +
                               std::to_string(k.p.pad_right);
      Conv2dParams p = k.p;
      p.layout = Layout::nhwc;
      Tensor x_nhwc = to_nhwc(x);
      EXPECT_LT(scaled_error(winograd(x_nhwc, w, &b, p, OH, OW, false), to_nhwc(want)), 2e-5) << what << " F32";
      EXPECT_LT(scaled_error(winograd(x_nhwc, w, &b, p, OH, OW, true), to_nhwc(want_bf16)), 2e-5) << what << " bf16 values";
      Ctx c;
      Tensor no_bias = ops::sub(c, want_bf16, b.reshape({1, k.Co, 1, 1}));
      EXPECT_LT(scaled_error(winograd(x_nhwc, w, nullptr, p, OH, OW, true), to_nhwc(no_bias)), 2e-5) << what << " without bias";
    }
  }
  cpu::isa_set_for_tests(before);
  cpu::winograd_force(-1);
}

// Same bits run after run at a thread count (across thread counts oneDNN's F32 GEMM may split
// its sums differently at some ISAs, as for the engine's other F32 products).
TEST(Winograd, RoundsItsInputToBf16AndIsDeterministic) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "the Winograd convolution needs AVX2 + FMA";
  cpu::winograd_force(1);
  Tensor x = randn({1, 64, 37, 29}, 910, 3.0f), w = randn({32, 64, 3, 3}, 911, 0.1f);
  Conv2dParams p{1, 1, 1, 1, 1};
  Tensor want = Tensor::zeros({1, 32, 37, 29}, DType::F32);
  cpu::ref::conv2d(convert(x, DType::BF16), convert(w, DType::BF16), nullptr, p, want);
  p.layout = Layout::nhwc;
  Tensor x_nhwc = to_nhwc(x);   // not bf16 values: the kernel rounds them
  for (int threads : {1, 3}) {
    ThreadPool::set_global_threads(threads);
    Tensor first = winograd(x_nhwc, w, nullptr, p, 37, 29, true);
    Tensor again = winograd(x_nhwc, w, nullptr, p, 37, 29, true);
    EXPECT_LT(scaled_error(first, to_nhwc(want)), 2e-5) << threads << " threads";
    EXPECT_EQ(std::memcmp(first.data<float>(), again.data<float>(), first.nbytes()), 0) << threads << " threads: runs differ";
  }
  ThreadPool::set_global_threads(0);
  cpu::winograd_force(-1);
}

// An image gets the same bits alone and in a batch (a batch of images is what `generate` decodes
// when several fit), at every vector width.
TEST(Winograd, AnImageGetsTheSameBitsAloneAndInABatch) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "the Winograd convolution needs AVX2 + FMA";
  cpu::winograd_force(1);
  const cpu::Isa before = cpu::active_isa();
  Tensor x = randn({2, 64, 64, 64}, 940), w = randn({64, 64, 3, 3}, 941, 0.1f), b = randn({64}, 942);
  Conv2dParams p{1, 1, 1, 1, 1};
  p.layout = Layout::nhwc;
  Tensor both = to_nhwc(x);
  for (cpu::Isa level : {before, cpu::Isa::avx2}) {
    cpu::isa_set_for_tests(level);
    Tensor batch = winograd(both, w, &b, p, 64, 64, true);
    for (int64_t i = 0; i < 2; ++i) {
      Tensor alone = winograd(to_nhwc(x.slice(0, i, 1)), w, &b, p, 64, 64, true);
      Tensor part = batch.slice(0, i, 1);
      EXPECT_EQ(alone.to_floats(), part.to_floats()) << "image " << i << " at " << cpu::isa_name(level);
    }
  }
  cpu::isa_set_for_tests(before);
  cpu::winograd_force(-1);
}

// The backend's BF16 convolution takes the Winograd path only where it applies and is switched on,
// and both paths compute the same convolution; weights freed and replaced at the same address
// are transformed again, not taken from the cache; the memory plan's figure for them and their release.
TEST(Winograd, TheBackendTakesItWhereSwitchedOnAndNoticesNewWeights) {
  if (!cpu::isa_at_least(cpu::Isa::avx2)) GTEST_SKIP() << "the Winograd convolution needs AVX2 + FMA";
  Ctx c;
  c.compute = Compute::BF16;
  Conv2dParams p{1, 1, 1, 1, 1};
  p.layout = Layout::nhwc;
  Tensor x = to_nhwc(randn({1, 32, 12, 12}, 920));
  Tensor out = Tensor::empty({1, 12, 12, 16}, DType::F32);
  for (int round = 0; round < 3; ++round) {
    Tensor w = randn({16, 32, 3, 3}, 921 + round, 0.2f);
    cpu::winograd_force(0);
    EXPECT_FALSE(cpu::winograd_applies(x, w, p, out));
    Tensor direct = ops::conv2d(c, x, w, nullptr, p);
    cpu::winograd_force(1);
    ASSERT_TRUE(cpu::winograd_applies(x, w, p, out));
    Tensor wino = ops::conv2d(c, x, w, nullptr, p);
    EXPECT_GE(cpu::winograd_weight_bytes(), size_t{36 * 16 * 32 * 4});
    EXPECT_LT(scaled_error(wino, direct), 2e-5) << "round " << round;
    EXPECT_GT(scaled_error(wino, direct), 0.0) << "round " << round << ": the two paths were the same one";
    // What the memory plan counts for these weights, and what releasing them frees.
    EXPECT_EQ(c.backend->weight_copy_bytes(w), size_t{36 * 16 * 32 * 4});
    const size_t before = cpu::winograd_weight_bytes();
    EXPECT_GE(c.backend->release_weight_copies(*w.storage()), size_t{36 * 16 * 32 * 4});
    EXPECT_LE(cpu::winograd_weight_bytes(), before - 36 * 16 * 32 * 4);
    cpu::winograd_force(0);
    EXPECT_EQ(c.backend->weight_copy_bytes(w), size_t{0});
  }
  // The default: every width without bf16 instructions, 256 channels and more on 64² pixels and more
  // with them, never with AMX.
  cpu::winograd_force(-1);
  if (!std::getenv("FLUXPIPE_WINOGRAD")) {
    Tensor wide = to_nhwc(randn({1, 256, 64, 64}, 934)), wide_out = Tensor::empty({1, 64, 64, 256}, DType::F32);
    Tensor small = to_nhwc(randn({1, 256, 32, 32}, 937)), small_out = Tensor::empty({1, 32, 32, 256}, DType::F32);
    Tensor wide_w = randn({256, 256, 3, 3}, 935, 0.05f);
    const cpu::Isa before = cpu::active_isa();
    for (cpu::Isa level : {before, cpu::Isa::avx2}) {
      cpu::isa_set_for_tests(level);
      const bool amx = cpu::isa_at_least(cpu::Isa::amx), bf16 = cpu::isa_at_least(cpu::Isa::avx512bf16);
      EXPECT_EQ(cpu::winograd_applies(x, randn({16, 32, 3, 3}, 936), p, out), !bf16) << cpu::isa_name(level);
      EXPECT_EQ(cpu::winograd_applies(wide, wide_w, p, wide_out), !amx) << cpu::isa_name(level);
      EXPECT_EQ(cpu::winograd_applies(small, wide_w, p, small_out), !bf16) << cpu::isa_name(level);
    }
    cpu::isa_set_for_tests(before);
  }
  cpu::winograd_force(1);
  Conv2dParams strided{2, 1, 1, 1, 1};
  strided.layout = Layout::nhwc;
  EXPECT_FALSE(cpu::winograd_applies(x, randn({16, 32, 3, 3}, 930), strided, Tensor::empty({1, 6, 6, 16}, DType::F32)));
  EXPECT_FALSE(cpu::winograd_applies(x, randn({16, 32, 1, 1}, 931), p, out));
  EXPECT_FALSE(cpu::winograd_applies(to_nhwc(randn({1, 3, 12, 12}, 932)), randn({16, 3, 3, 3}, 933), p, out));
  cpu::winograd_force(-1);
}

}  // namespace
}  // namespace fluxpipe
