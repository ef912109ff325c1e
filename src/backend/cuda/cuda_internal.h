// The CUDA backend's insides, shared by its .cu files (nothing outside src/backend/cuda
// includes this): error checks that name the op and the call, the device memory cache, the
// kernels' launchers (raw device pointers, one stream), and the cuBLASLt products.
// Thread-safety: the memory cache is locked; everything else runs on the one engine thread
// that calls the backend (see backend/backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace fluxpipe::cuda {

// Throws InternalError "[op] call: cudaErrorX: text" (UserError for out-of-memory, which a
// request can cause and an operator can act on).
[[noreturn]] void fail(const char* op, const char* call, cudaError_t e);
#define FLUXPIPE_CUDA_CHECK(op, call)                                 \
  do {                                                                \
    cudaError_t fluxpipe_e_ = (call);                                 \
    if (fluxpipe_e_ != cudaSuccess) ::fluxpipe::cuda::fail(op, #call, fluxpipe_e_); \
  } while (0)
// After a kernel launch: a bad configuration shows here; a fault shows at the next sync.
#define FLUXPIPE_CUDA_LAUNCHED(op) FLUXPIPE_CUDA_CHECK(op, cudaGetLastError())

// ---- device memory: a cache of freed blocks per device (the GPU twin of core/block_cache.h) ----
// Blocks are reused in the order of the backend's single stream, so a block freed while queued
// kernels still read it is only handed to work queued after them.
class MemoryCache {
 public:
  explicit MemoryCache(int device);
  // Storage of at least `bytes` on the device (256-byte aligned). UserError when the device
  // cannot hold it even after the cache is emptied.
  std::shared_ptr<Storage> allocate(size_t bytes, const char* op);
  // Gives every cached block back to the driver.
  void empty();
  size_t in_use_bytes() const;   // handed out and not yet released

 private:
  struct Impl;
  int device_;
  std::shared_ptr<Impl> impl_;   // shared with every block's release, so blocks may outlive the cache
};

// ---- element conversions (cuda_dequant.cu) ----
// Dense dtypes a kernel can read element by element (and block types, contiguous, element j
// of the flat tensor) -> float. REQUIRES src contiguous for block types.
void to_f32(DType t, const void* src, float* dst, int64_t n, cudaStream_t s);
void to_bf16(DType t, const void* src, uint16_t* dst, int64_t n, cudaStream_t s);
// float -> dense dtype `t` (F32, F16, BF16); false for other targets.
bool from_f32(DType t, const float* src, void* dst, int64_t n, cudaStream_t s);
// Rows of `table` ([V, H] of dtype t) picked by ids -> F32 [N, H].
void gather_rows(DType t, const void* table, int64_t H, const int32_t* ids, int64_t N, float* out, cudaStream_t s);
// A strided dense tensor (up to 8 dims; strides in elements) -> contiguous, converting dtypes
// (dense float and integer sources; F32, F16, BF16 targets).
bool strided_copy(DType from, const void* src, const Shape& shape, const Shape& strides, DType to, void* dst, cudaStream_t s);

// ---- cuBLASLt products (cuda_gemm.cu) ----
// Row-major C[M, N] (F32, leading dimension ldc) = alpha * A[M, K] · B[N, K]ᵀ (+ beta * C),
// A and B both F32 or both BF16, rows contiguous with leading dimensions lda, ldb; `batch`
// products with strides (elements) sa, sb, sc.
struct Gemm {
  DType type = DType::F32;   // F32 or BF16 (A and B)
  int64_t M = 0, N = 0, K = 0;
  const void* A = nullptr;
  int64_t lda = 0, sa = 0;
  const void* B = nullptr;
  int64_t ldb = 0, sb = 0;
  float* C = nullptr;
  int64_t ldc = 0, sc = 0;
  int64_t batch = 1;
  float alpha = 1.0f, beta = 0.0f;
  bool b_transposed = true;  // false: B is [K, N] row-major (ldb >= N), C = A · B
};
class Blas {
 public:
  Blas(int device, cudaStream_t stream, MemoryCache& memory);
  ~Blas();
  // Throws InternalError "[op] cublasLtMatmul: STATUS for BF16[M, K] x BF16[N, K]..." when cuBLASLt
  // refuses the problem.
  void gemm(const Gemm& g, const char* op);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- kernels (cuda_kernels.cu); shapes as in backend/backend.h ----
enum class UnaryOp { gelu_tanh, gelu_erf, silu, quick_gelu };
enum class BinaryOp { add, sub, mul, div };
void unary(UnaryOp op, const float* x, float* out, int64_t n, cudaStream_t s);
// out (shape `out_shape`) = a op b, a/b broadcast (strides 0 on broadcast dimensions), up to 8 dims.
void binary(BinaryOp op, const float* a, const Shape& a_strides, const float* b, const Shape& b_strides, float* out,
            const Shape& out_shape, cudaStream_t s);
void layer_norm(const float* x, const float* w, const float* b, float eps, float* out, int64_t rows, int64_t D, cudaStream_t s);
void layer_norm_modulate(const float* x, const float* shift, const float* scale, float eps, float* out, int64_t B, int64_t L,
                         int64_t D, cudaStream_t s);
void rms_norm(const float* x, const float* w, float eps, float* out, int64_t rows, int64_t D, cudaStream_t s);
void add_gated(const float* x, const float* gate, const float* y, float* out, int64_t B, int64_t L, int64_t D, cudaStream_t s);
// stats: 2 * B * groups doubles of scratch.
void group_norm(const float* x, int64_t B, int64_t C, int64_t HW, int groups, const float* w, const float* b, float eps, bool silu,
                float* out, double* stats, cudaStream_t s);
void rope(const float* x, const float* cos, const float* sin, float* out, int64_t B, int64_t H, int64_t L, int64_t D,
          bool cos_per_batch, cudaStream_t s);
// Softmax over each row of n, written as F32 to out_f32 or BF16 to out_bf16 (one of them; may be x).
void softmax_rows(const float* x, int64_t rows, int64_t n, float* out_f32, uint16_t* out_bf16, cudaStream_t s);
// The attention's softmax over scores [nBH, Lq, Lk] of heads BH0.. BH0 + nBH (bh = b * H + h):
// `bias` (F32 [bB, bH, Lq, Lk]; strides in elements, 0 where it broadcasts) added first, keys
// j > i masked when `causal`; a fully masked row gives zeros.
void attention_softmax(const float* scores, int64_t BH0, int64_t nBH, int64_t H, int64_t Lq, int64_t Lk, const float* bias,
                       int64_t bias_sb, int64_t bias_sh, bool causal, float* out_f32, uint16_t* out_bf16, cudaStream_t s);
// x [Cin, H, W] -> col [Cin*kh*kw, P] for output rows [oy0, oy1) (P = (oy1 - oy0) * OW), F32 or BF16.
void im2col(const float* x, int64_t Cin, int64_t H, int64_t W, int64_t kh, int64_t kw, int stride, int pad_top, int pad_left,
            int64_t OW, int64_t oy0, int64_t oy1, float* col_f32, uint16_t* col_bf16, cudaStream_t s);
// out[r, c] += bias[c] over rows of n; out[b, c, p] += bias[c] over channels of HW values.
void add_bias_cols(float* out, const float* bias, int64_t rows, int64_t n, cudaStream_t s);
void add_bias_channels(float* out, const float* bias, int64_t B, int64_t C, int64_t HW, cudaStream_t s);
void upsample_nearest2x(const float* x, float* out, int64_t BC, int64_t H, int64_t W, cudaStream_t s);
void position_bias(const float* table, int64_t heads, const int32_t* buckets, int64_t Lq, int64_t Lk, const float* mask,
                   int64_t B, float* out, cudaStream_t s);
void timestep_embedding(const float* t, int64_t B, int64_t dim, float time_factor, float max_period, float* out,
                        cudaStream_t s);
// axes_dim: up to 8 axes.
void rope_tables(const float* ids, int64_t BL, const std::vector<int>& axes_dim, double theta, float* cos, float* sin,
                 cudaStream_t s);
void to_u8(const float* image, int64_t B, int64_t H, int64_t W, uint8_t* out, cudaStream_t s);
void blend_tile(const float* tile, int64_t C, int64_t th, int64_t tw, const float* wy, const float* wx, float* acc, int64_t H,
                int64_t W, int64_t b, int64_t y0, int64_t x0, float* wsum, cudaStream_t s);

}  // namespace fluxpipe::cuda
