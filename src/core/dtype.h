// fluxpipe core: element types — dense floats, fp8, integers for I/O, and the GGUF block
// quantizations found in the FLUX.1 GGUF files people download.
//
// A dtype stores `block_elems` elements in `block_bytes` bytes (1 element per "block" for
// dense types). Conversions and dequantization here are the plain, portable reference;
// the CPU backend has vectorised versions tested against these.
// Thread-safety: all functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace fluxpipe {

enum class DType : uint8_t {
  F32, F16, BF16, F8_E4M3, F8_E5M2, F64, I8, U8, I16, I32, I64, BOOL,
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
};

struct DTypeInfo {
  const char* name;          // "F32", "Q4_K", ...
  int block_elems;           // elements per block (1 for dense types)
  int block_bytes;           // bytes per block
  bool quantized;            // GGUF block type
  bool floating;             // can be converted to and from float
};

const DTypeInfo& info(DType t);
inline const char* name(DType t) { return info(t).name; }
inline bool is_quantized(DType t) { return info(t).quantized; }

// Bytes for `n` elements. REQUIRES n is a multiple of the block size (checked by callers
// that validate files; see row_bytes_checked).
inline size_t bytes_for(DType t, int64_t n) {
  const DTypeInfo& i = info(t);
  return static_cast<size_t>(n / i.block_elems) * static_cast<size_t>(i.block_bytes);
}

// Names used by safetensors headers ("F32", "BF16", "F8_E4M3", ...), and the GGML type ids
// used by GGUF. nullopt for a name/id we do not support.
std::optional<DType> dtype_from_safetensors(std::string_view name);
// Q4_K / Q5_K: the j-th (0..7) 6-bit scale and min of a super-block's 12 packed scale bytes
// (8 pairs of 6-bit values). Inline: the vectorised dequantizers call it twice per 64 values.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *mn = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// A block type we can quantize to, by its GGUF name in either case ("q4_k", "Q8_0"); nullopt otherwise.
std::optional<DType> quant_type_from_name(std::string_view name);
const char* safetensors_name(DType t);   // nullptr for types safetensors cannot hold
std::optional<DType> dtype_from_ggml(uint32_t ggml_type);
std::optional<uint32_t> ggml_type_id(DType t);

// Scalar conversions (round to nearest even where narrowing).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_bf16(float f);
float f8_e4m3_to_f32(uint8_t v);
float f8_e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8_e4m3(float f);
uint8_t f32_to_f8_e5m2(float f);

// Converts `n` elements of type `t` at `src` to float. For block types, n must be a
// multiple of the block size. Integer types convert by value.
void to_f32(DType t, const void* src, float* dst, int64_t n);
// Converts `n` floats to type `t` (dense float types and the quantizers we implement:
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K). Throws UserError for others.
void from_f32(DType t, const float* src, void* dst, int64_t n);
bool can_encode(DType t);

}  // namespace fluxpipe
