// Element conversions on the GPU: every dtype the CPU reads (dense floats, fp8, integers, the
// GGUF block types) decoded element by element to float, and float encoded to F32, F16 and
// BF16. The block layouts are those of core/dtype.cpp (GGML's, little-endian, fp16 scales);
// the tests compare each against the CPU's reference decoder.
#include <cuda_fp16.h>

#include "backend/cuda/cuda_device.cuh"
#include "backend/cuda/cuda_internal.h"
#include "core/error.h"

namespace fluxpipe::cuda {
namespace {


__device__ inline float f16(const uint8_t* p) {
  __half_raw r;
  r.x = static_cast<unsigned short>(p[0] | (p[1] << 8));
  return __half2float(__half(r));
}
__device__ inline uint32_t u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
__device__ inline float fp8_e4m3(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int e = (v >> 3) & 0xF, m = v & 7;
  if (e == 15 && m == 7) return __int_as_float(0x7fc00000);
  if (e == 0) return sign * ldexpf(static_cast<float>(m), -9);
  return sign * ldexpf(static_cast<float>(8 + m), e - 10);
}
__device__ inline float fp8_e5m2(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int e = (v >> 2) & 0x1F, m = v & 3;
  if (e == 31) return m ? __int_as_float(0x7fc00000) : sign * __int_as_float(0x7f800000);
  if (e == 0) return sign * ldexpf(static_cast<float>(m), -16);
  return sign * ldexpf(static_cast<float>(4 + m), e - 17);
}
__device__ inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Element i of a flat tensor of dtype t (block types: contiguous blocks).
__device__ float element(DType t, const uint8_t* p, int64_t i) {
  switch (t) {
    case DType::F32: return reinterpret_cast<const float*>(p)[i];
    case DType::F16: return f16(p + 2 * i);
    case DType::BF16: return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16);
    case DType::F8_E4M3: return fp8_e4m3(p[i]);
    case DType::F8_E5M2: return fp8_e5m2(p[i]);
    case DType::F64: return static_cast<float>(reinterpret_cast<const double*>(p)[i]);
    case DType::I8: return static_cast<float>(reinterpret_cast<const int8_t*>(p)[i]);
    case DType::U8: case DType::BOOL: return static_cast<float>(p[i]);
    case DType::I16: return static_cast<float>(reinterpret_cast<const int16_t*>(p)[i]);
    case DType::I32: return static_cast<float>(reinterpret_cast<const int32_t*>(p)[i]);
    case DType::I64: return static_cast<float>(reinterpret_cast<const long long*>(p)[i]);
    case DType::Q8_0: {
      const uint8_t* b = p + (i / 32) * 34;
      int j = static_cast<int>(i % 32);
      return f16(b) * static_cast<float>(static_cast<int8_t>(b[2 + j]));
    }
    case DType::Q4_0: {
      const uint8_t* b = p + (i / 32) * 18;
      int j = static_cast<int>(i % 32);
      int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
      return f16(b) * static_cast<float>(q - 8);
    }
    case DType::Q4_1: {
      const uint8_t* b = p + (i / 32) * 20;
      int j = static_cast<int>(i % 32);
      int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
      return f16(b) * static_cast<float>(q) + f16(b + 2);
    }
    case DType::Q5_0: case DType::Q5_1: {
      const bool has_min = t == DType::Q5_1;
      const uint8_t* b = p + (i / 32) * (has_min ? 24 : 22);
      int j = static_cast<int>(i % 32);
      const uint8_t* h = b + (has_min ? 4 : 2);
      uint32_t qh = u32(h);
      const uint8_t* qs = h + 4;
      int q = j < 16 ? ((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) : ((qs[j - 16] >> 4) | (((qh >> j) & 1) << 4));
      if (has_min) return f16(b) * static_cast<float>(q) + f16(b + 2);
      return f16(b) * static_cast<float>(q - 16);
    }
    case DType::Q2_K: {
      const uint8_t* b = p + (i / 256) * 84;
      int r = static_cast<int>(i % 256), n = r / 128, si = (r % 128) / 32, half = (r % 32) / 16, l = r % 16;
      int sc = b[n * 8 + si * 2 + half];
      int q = (b[16 + n * 32 + l + 16 * half] >> (2 * si)) & 3;
      return f16(b + 80) * static_cast<float>(sc & 0xF) * static_cast<float>(q) - f16(b + 82) * static_cast<float>(sc >> 4);
    }
    case DType::Q3_K: {
      const uint8_t* b = p + (i / 256) * 110;
      int r = static_cast<int>(i % 256), n = r / 128, si = (r % 128) / 32, half = (r % 32) / 16, l = r % 16;
      int is = n * 8 + si * 2 + half, k = l + 16 * half;
      const uint8_t* packed = b + 96;
      int lo = is < 8 ? (packed[is] & 0xF) : (packed[is - 8] >> 4);
      int hi = (packed[8 + (is % 4)] >> (2 * (is / 4))) & 3;
      int scale = (lo | (hi << 4)) - 32;
      int q = (b[32 + n * 32 + k] >> (2 * si)) & 3;
      int high = (b[k] & (1 << (n * 4 + si))) ? 0 : 4;
      return f16(b + 108) * static_cast<float>(scale) * static_cast<float>(q - high);
    }
    case DType::Q4_K: case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const uint8_t* b = p + (i / 256) * (five ? 176 : 144);
      int r = static_cast<int>(i % 256), chunk = r / 64, upper = (r % 64) >= 32, l = r % 32;
      int sc, mn;
      scale_min_k4(2 * chunk + upper, b + 4, &sc, &mn);
      const uint8_t* qs = b + (five ? 48 : 16);
      int q = upper ? (qs[chunk * 32 + l] >> 4) : (qs[chunk * 32 + l] & 0xF);
      if (five && (b[16 + l] & ((upper ? 2 : 1) << (2 * chunk)))) q += 16;
      return f16(b) * static_cast<float>(sc) * static_cast<float>(q) - f16(b + 2) * static_cast<float>(mn);
    }
    case DType::Q6_K: {
      const uint8_t* b = p + (i / 256) * 210;
      int r = static_cast<int>(i % 256), n = r / 128, quarter = (r % 128) / 32, l = r % 32, is = l / 16;
      const uint8_t* ql = b + n * 64;
      const uint8_t* qh = b + 128 + n * 32;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + n * 8;
      int low = (quarter & 1) ? ql[l + 32] : ql[l];
      low = quarter >= 2 ? (low >> 4) : (low & 0xF);
      int q = (low | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
      return f16(b + 208) * static_cast<float>(sc[is + 2 * quarter]) * static_cast<float>(q);
    }
  }
  return 0.0f;
}

__global__ void k_to_f32(DType t, const uint8_t* src, float* dst, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n)
    dst[i] = element(t, src, i);
}
__global__ void k_to_bf16(DType t, const uint8_t* src, uint16_t* dst, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n)
    dst[i] = bf16_bits(element(t, src, i));
}
__global__ void k_from_f32(DType t, const float* src, uint8_t* dst, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    float f = src[i];
    if (t == DType::F32) reinterpret_cast<float*>(dst)[i] = f;
    else if (t == DType::BF16) reinterpret_cast<uint16_t*>(dst)[i] = bf16_bits(f);
    else reinterpret_cast<__half*>(dst)[i] = __float2half_rn(f);
  }
}
__global__ void k_gather_rows(DType t, const uint8_t* table, int64_t H, int64_t row_bytes, const int32_t* ids, float* out) {
  const int64_t n = blockIdx.y;
  const uint8_t* row = table + static_cast<int64_t>(ids[n]) * row_bytes;
  FLUXPIPE_GRID_STRIDE(j, H)
    out[n * H + j] = element(t, row, j);
}

struct Strides8 {
  int nd;
  long long shape[8], stride[8];
};
__global__ void k_strided(DType from, const uint8_t* src, Strides8 s, DType to, uint8_t* dst, int64_t n) {
  FLUXPIPE_GRID_STRIDE(i, n) {
    int64_t rem = i, off = 0;
    for (int d = s.nd - 1; d >= 0; --d) {
      off += (rem % s.shape[d]) * s.stride[d];
      rem /= s.shape[d];
    }
    float f = element(from, src, off);
    if (to == DType::F32) reinterpret_cast<float*>(dst)[i] = f;
    else if (to == DType::BF16) reinterpret_cast<uint16_t*>(dst)[i] = bf16_bits(f);
    else reinterpret_cast<__half*>(dst)[i] = __float2half_rn(f);
  }
}

}  // namespace

void to_f32(DType t, const void* src, float* dst, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  k_to_f32<<<grid(n), kThreads, 0, s>>>(t, static_cast<const uint8_t*>(src), dst, n);
  FLUXPIPE_CUDA_LAUNCHED("to_f32");
}
void to_bf16(DType t, const void* src, uint16_t* dst, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  k_to_bf16<<<grid(n), kThreads, 0, s>>>(t, static_cast<const uint8_t*>(src), dst, n);
  FLUXPIPE_CUDA_LAUNCHED("to_bf16");
}
bool from_f32(DType t, const float* src, void* dst, int64_t n, cudaStream_t s) {
  if (t != DType::F32 && t != DType::BF16 && t != DType::F16) return false;
  if (n == 0) return true;
  k_from_f32<<<grid(n), kThreads, 0, s>>>(t, src, static_cast<uint8_t*>(dst), n);
  FLUXPIPE_CUDA_LAUNCHED("from_f32");
  return true;
}
void gather_rows(DType t, const void* table, int64_t H, const int32_t* ids, int64_t N, float* out, cudaStream_t s) {
  if (N == 0 || H == 0) return;
  dim3 g(std::min<unsigned>(grid(H), 64u), static_cast<unsigned>(N));
  k_gather_rows<<<g, kThreads, 0, s>>>(t, static_cast<const uint8_t*>(table), H, static_cast<int64_t>(bytes_for(t, H)), ids, out);
  FLUXPIPE_CUDA_LAUNCHED("embedding");
}
bool strided_copy(DType from, const void* src, const Shape& shape, const Shape& strides, DType to, void* dst, cudaStream_t s) {
  if (is_quantized(from) || shape.size() > 8) return false;
  if (to != DType::F32 && to != DType::BF16 && to != DType::F16) return false;
  Strides8 st{};
  st.nd = static_cast<int>(shape.size());
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    st.shape[d] = shape[d];
    st.stride[d] = strides[d];
    n *= shape[d];
  }
  if (n == 0) return true;
  k_strided<<<grid(n), kThreads, 0, s>>>(from, static_cast<const uint8_t*>(src), st, to, static_cast<uint8_t*>(dst), n);
  FLUXPIPE_CUDA_LAUNCHED("copy");
  return true;
}

}  // namespace fluxpipe::cuda
