// Device-side helpers shared by the CUDA backend's kernel files: the launch shape (threads per
// block, a grid-stride grid) and bf16 rounding. Included by .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fluxpipe::cuda {

constexpr int kThreads = 256;

// Blocks for n elements, one per thread, at most 65535 * 8 (threads then stride over the rest).
inline unsigned grid(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

#define FLUXPIPE_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// Round to nearest even, quiet NaNs kept: core/dtype.cpp's f32_to_bf16.
__device__ inline uint16_t bf16_bits(float f) {
  uint32_t x = __float_as_uint(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace fluxpipe::cuda
