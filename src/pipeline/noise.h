// fluxpipe pipeline: starting noise that reproduces PyTorch's CPU generator, so that a seed
// gives the same latent noise as diffusers (bf16 draw) and ComfyUI / BFL (float32 draw).
//
// torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype) on the CPU:
// a 32-bit Mersenne Twister; tensors of 16 or more elements fill uniforms and transform
// them 16 at a time with Box-Muller; smaller ones draw double-precision normals one by one.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace fluxpipe {

// REQUIRES dtype F32 or BF16. Returns a CPU tensor of that dtype.
Tensor torch_randn(uint64_t seed, const Shape& shape, DType dtype);

}  // namespace fluxpipe
