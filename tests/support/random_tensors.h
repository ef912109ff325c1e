// Random test tensors: normal values from a seed (the same tensor every run), and a tensor
// converted to another dtype through the reference encoders of core/dtype.h.
#pragma once

#include <random>
#include <vector>

#include "core/tensor.h"

namespace fluxpipe::testing {

inline Tensor randn(const Shape& shape, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(numel(shape)));
  for (float& x : v) x = nd(rng);
  return Tensor::from_floats(shape, v);
}

inline Tensor convert(const Tensor& t, DType d) {
  Tensor out = Tensor::zeros(t.shape(), d);
  std::vector<float> f = t.to_floats();
  from_f32(d, f.data(), out.data<uint8_t>(), t.numel());
  return out;
}

}  // namespace fluxpipe::testing
