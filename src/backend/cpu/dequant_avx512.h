// Vectorised dequantization for the CPU backend (see dequant_avx512.cpp).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace fluxpipe::cpu {

// Like to_f32, for the types it covers, where the CPU has AVX-512; false otherwise
// (the caller then uses to_f32). REQUIRES n a multiple of the block size.
bool dequantize_avx512(DType t, const uint8_t* src, float* dst, int64_t n);

// Straight to bf16 (Q8_0, Q4_0, Q4_K, F16) where the CPU has AVX-512 BF16: the values of
// dequantize_avx512 rounded to nearest even, in one pass. False otherwise.
bool dequantize_bf16_avx512(DType t, const uint8_t* src, uint16_t* dst, int64_t n);
// Whether dequantize_bf16_avx512 covers `t` on this CPU.
bool has_dequantize_bf16_avx512(DType t);

}  // namespace fluxpipe::cpu
