// Vectorised dequantization for the CPU backend (see dequant_avx512.cpp).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace fluxpipe::cpu {

// Like to_f32, for the types it covers, where the CPU has AVX-512; false otherwise
// (the caller then uses to_f32). REQUIRES n a multiple of the block size.
bool dequantize_avx512(DType t, const uint8_t* src, float* dst, int64_t n);

}  // namespace fluxpipe::cpu
