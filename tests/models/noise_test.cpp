// Starting noise against torch.randn on a seeded CPU generator (../shared/testdata/torch-randn).
#include <gtest/gtest.h>

#include "golden.h"
#include "pipeline/noise.h"

namespace fluxpipe::testing {
namespace {

TEST(Noise, ReproducesTorchRandnForEverySeedShapeAndDtype) {
  nlohmann::json index = read_json(testdata("torch-randn/index.json"));
  io::WeightSet ref = io::load_weights(testdata("torch-randn/randn.safetensors"));
  int checked = 0;
  for (const auto& c : index) {
    std::string name = c["name"];
    DType dt = c["dtype"] == "bf16" ? DType::BF16 : DType::F32;
    Shape shape = c["shape"].get<Shape>();
    Tensor got = torch_randn(c["seed"].get<uint64_t>(), shape, dt);
    const Tensor& want = ref.at(name);
    ASSERT_EQ(got.dtype(), want.dtype()) << name;
    ASSERT_EQ(got.shape(), want.shape()) << name;
    // float32: PyTorch's vectorised log/cos/sin may differ from libm in the last bit.
    // bf16: bit for bit.
    expect_matches(got, want, dt == DType::F32 ? 1e-6 : 0.0, dt == DType::F32 ? 1e-6 : 0.0, name);
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

}  // namespace
}  // namespace fluxpipe::testing
