// The large-block cache behind tensor allocation (core/block_cache.h).
#include <gtest/gtest.h>

#include <cstring>

#include "core/block_cache.h"
#include "core/tensor.h"

namespace fluxpipe {
namespace {

constexpr size_t MiB = size_t{1} << 20;

TEST(BlockCache, ReusesAFreedBlockOfAboutTheSameSize) {
  block_cache::trim();
  size_t cap = 0;
  void* a = block_cache::take(9 * MiB, &cap);
  ASSERT_NE(a, nullptr);
  EXPECT_GE(cap, 9 * MiB);
  std::memset(a, 7, 9 * MiB);   // the whole block is usable
  block_cache::give(a, cap);
  EXPECT_EQ(block_cache::kept_bytes(), cap);
  size_t cap2 = 0;
  void* b = block_cache::take(8 * MiB + 5, &cap2);   // within a quarter: the same block
  EXPECT_EQ(b, a);
  EXPECT_EQ(cap2, cap);
  EXPECT_EQ(block_cache::kept_bytes(), 0u);
  block_cache::give(b, cap2);
  EXPECT_EQ(block_cache::trim(), cap);
  EXPECT_EQ(block_cache::kept_bytes(), 0u);
}

TEST(BlockCache, AMissFreesEverythingKept) {
  block_cache::trim();
  size_t c1 = 0, c2 = 0, c3 = 0;
  void* a = block_cache::take(4 * MiB, &c1);
  void* b = block_cache::take(16 * MiB, &c2);
  block_cache::give(a, c1);
  block_cache::give(b, c2);
  EXPECT_EQ(block_cache::kept_bytes(), c1 + c2);
  // Nothing is live, and 64 MiB fits no kept block: everything kept is freed before growing.
  void* big = block_cache::take(64 * MiB, &c3);
  EXPECT_EQ(block_cache::kept_bytes(), 0u);
  // Far larger than asked is not a fit either (it would hold memory nobody uses).
  block_cache::give(big, c3);
  EXPECT_EQ(block_cache::kept_bytes(), c3);
  void* small = block_cache::take(4 * MiB, &c1);
  EXPECT_LT(c1, c3);
  EXPECT_EQ(block_cache::kept_bytes(), 0u);   // the big block was freed, not handed out
  block_cache::give(small, c1);
  block_cache::trim();
}

TEST(BlockCache, SmallBlocksAreNotKept) {
  block_cache::trim();
  size_t cap = 0;
  void* p = block_cache::take(1000, &cap);
  ASSERT_NE(p, nullptr);
  block_cache::give(p, cap);
  EXPECT_EQ(block_cache::kept_bytes(), 0u);
}

TEST(BlockCache, TensorsZeroedOrNotAsAsked) {
  block_cache::trim();
  {
    Tensor t = Tensor::empty({4 * 1024 * 1024}, DType::F32);   // 16 MiB
    std::memset(t.data<float>(), 0xff, t.nbytes());
  }
  Tensor z = Tensor::zeros({4 * 1024 * 1024}, DType::F32);    // reuses that block, must be zero
  const float* p = z.data<float>();
  for (int64_t i = 0; i < z.numel(); i += 4099) ASSERT_EQ(p[i], 0.0f) << i;
  block_cache::trim();
}

}  // namespace
}  // namespace fluxpipe
