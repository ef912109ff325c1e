// CPU GEMM core: C[M,N] = A[M,K] · B[N,K]ᵀ, A and C float, B in any float or block dtype
// (dequantized tile by tile while packing, never as a whole).
//
// Blocking: N in blocks of 128 columns, split further into row ranges only when there are too
// few blocks for the threads (every element of C is computed by one thread in one fixed order:
// results do not depend on the thread count); K in chunks packed into an L2-resident panel
// (4096 for AMX, 512 otherwise); M in micro-tiles of 8 rows (32 for AMX).
// Large products (M >= 64) go to oneDNN where that is faster: on CPUs with AVX-512 BF16 but no
// AMX (see gemm() and bench/core_bench).
// Kernels: AMX BF16 tiles, AVX-512 F32 FMA and AVX-512 BF16 (vdpbf16ps) where the CPU has them, and a
// portable kernel (compiled for AVX2+FMA and for baseline x86-64) otherwise.
// Thread-safety: re-entrant; `parallel` uses the global ThreadPool.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace fluxpipe::cpu {

// The B operand: row n (an output column) holds K elements at data + n * row_bytes.
// `owner`, when set, is the storage `data` lies in: it lets the oneDNN path keep BF16 weights of
// a file mapping reordered into its own layout (onednn_gemm.h) and notice when they are gone.
struct BMatrix {
  DType dtype;
  const uint8_t* data;
  int64_t row_bytes;
  const std::shared_ptr<Storage>* owner = nullptr;
};

// C[M,N] = A[M,K] · B[N,K]ᵀ (+ bias[N] on every row when bias is set: oneDNN adds it as it
// writes C, the other paths in a pass after; the same single rounding either way).
// REQUIRES: K is a multiple of B's block size; lda >= K; ldc >= N.
void gemm(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
          Compute compute, bool parallel, const float* bias = nullptr);

// Which kernels this CPU runs ("amx-bf16", "avx512-bf16", "avx512", "avx2", "generic").
const char* gemm_kernel_name(Compute compute);
// True when the CPU has AMX BF16 tiles and the kernel lets this process use them.
bool gemm_has_amx();
// For tests: force the portable kernels even where AVX-512 exists.
void gemm_force_portable(bool on);
// For tests: use the AVX-512 BF16 kernel even where AMX exists.
void gemm_force_no_amx(bool on);
// For tests and benchmarks: which path products with M >= 64 and BF16 compute take — the
// engine's choice (automatic), always our kernels, or oneDNN wherever it can run them.
enum class GemmPath { automatic, own, onednn };
void gemm_force_path(GemmPath path);

// Helpers shared with the oneDNN path. Row chunk B[n, k0 : k0+kc] as floats into `row`, or
// rounded to bf16 into `out` (BF16 copied, Q8_0/Q4_0/Q4_K/F16 in one pass where the CPU has
// AVX-512 BF16, others through F32 in `tmp`, kc floats).
void b_row_to_f32(const BMatrix& B, int64_t n, int64_t k0, int64_t kc, float* row);
void b_row_to_bf16(const BMatrix& B, int64_t n, int64_t k0, int64_t kc, uint16_t* out, float* tmp);

// AMX building blocks for fused kernels (attention), valid only where gemm_has_amx():
// amx_begin() configures this thread's tiles, amx_end() releases them. amx_tile_product computes
// C[32 x 32] (+)= A[32 x kc] · P, A bf16 row-major (lda elements, even), kc a multiple of 32, P a
// panel of 32 columns in pair-interleaved layout: P[(p * 32 + j) * 2 + e] = B(k = 2p + e, column j).
// `first`: C is overwritten, otherwise accumulated (ldc floats per row).
void amx_begin();
void amx_end();
void amx_tile_product(const uint16_t* A, int64_t lda, const uint16_t* P, int64_t kc, float* C, int64_t ldc, bool first);
// Such a panel from 32 bf16 rows, one per column (row j at rows + j * ld, 2 * pairs values):
// P[(p * 32 + j) * 2 + e] = rows[j * ld + 2p + e]. Needs AVX-512 (as AMX does).
void amx_pack_panel(const uint16_t* rows, int64_t ld, int64_t pairs, uint16_t* P);
void f32_row_to_bf16(const float* src, uint16_t* dst, int64_t n);

}  // namespace fluxpipe::cpu
