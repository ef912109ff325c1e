#include "backend/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

constexpr int MR = 8;      // rows per micro-tile
constexpr int NR = 32;     // columns per packed panel (two 16-lane vectors)
constexpr int NC = 128;    // columns per thread work unit
constexpr int KC = 256;    // K per packed chunk (a multiple of every block size)

std::atomic<bool> g_force_portable{false};

bool cpu_has_avx512() {
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return v;
}
bool cpu_has_avx512bf16() {
  static const bool v = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return v;
}
bool cpu_has_avx2() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return v;
}

// ---- packing -----------------------------------------------------------------------------
// Row chunk B[n, k0 : k0+kc] as floats into `row` (kc floats).
void load_row(const BMatrix& B, int64_t n, int64_t k0, int64_t kc, float* row) {
  const uint8_t* p = B.data + n * B.row_bytes + bytes_for(B.dtype, k0);
  to_f32(B.dtype, p, row, kc);
}

// F32 panel: Bp[k * NR + j] = B[n0 + j, k0 + k], zero beyond N.
void pack_f32(const BMatrix& B, int64_t n0, int64_t N, int64_t k0, int64_t kc, float* Bp, float* row) {
  for (int j = 0; j < NR; ++j) {
    if (n0 + j >= N) {
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = 0.0f;
      continue;
    }
    if (B.dtype == DType::F32) {
      const float* src = reinterpret_cast<const float*>(B.data + (n0 + j) * B.row_bytes) + k0;
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = src[k];
    } else {
      load_row(B, n0 + j, k0, kc, row);
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = row[k];
    }
  }
}

// BF16 panel, K in pairs: Bp[(p * NR + j) * 2 + e] = bf16(B[n0 + j, k0 + 2p + e]); zero beyond N and K.
void pack_bf16(const BMatrix& B, int64_t n0, int64_t N, int64_t k0, int64_t kc, uint16_t* Bp, float* row) {
  int64_t pairs = (kc + 1) / 2;
  for (int j = 0; j < NR; ++j) {
    if (n0 + j >= N) {
      for (int64_t p = 0; p < pairs; ++p) Bp[(p * NR + j) * 2] = Bp[(p * NR + j) * 2 + 1] = 0;
      continue;
    }
    if (B.dtype == DType::BF16) {
      const uint16_t* src = reinterpret_cast<const uint16_t*>(B.data + (n0 + j) * B.row_bytes) + k0;
      for (int64_t k = 0; k < kc; ++k) Bp[((k >> 1) * NR + j) * 2 + (k & 1)] = src[k];
    } else {
      load_row(B, n0 + j, k0, kc, row);
      for (int64_t k = 0; k < kc; ++k) Bp[((k >> 1) * NR + j) * 2 + (k & 1)] = f32_to_bf16(row[k]);
    }
    if (kc & 1) Bp[((kc >> 1) * NR + j) * 2 + 1] = 0;
  }
}

// ---- micro-kernels: C[rows x 32] (+)= A[rows x kc] · panel --------------------------------
// `first`: C is overwritten (first K chunk), otherwise accumulated. `nv`: valid columns.

__attribute__((target("avx512f,avx512bw"))) void ukernel_f32_avx512(int rows, const float* A, int64_t lda,
                                                                   const float* Bp, int64_t kc, float* C,
                                                                   int64_t ldc, int nv, bool first) {
  __m512 acc[MR][2];
  __mmask16 m0 = nv >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nv) - 1);
  __mmask16 m1 = nv >= 32 ? 0xFFFF : nv <= 16 ? 0 : static_cast<__mmask16>((1u << (nv - 16)) - 1);
  for (int r = 0; r < MR; ++r) {
    if (r < rows && !first) {
      acc[r][0] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
      acc[r][1] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
#define FP_F32_KERNEL(R)                                                    \
  for (int64_t k = 0; k < kc; ++k) {                                        \
    __m512 b0 = _mm512_loadu_ps(Bp + k * NR), b1 = _mm512_loadu_ps(Bp + k * NR + 16); \
    for (int r = 0; r < R; ++r) {                                           \
      __m512 a = _mm512_set1_ps(A[r * lda + k]);                            \
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);                        \
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);                        \
    }                                                                       \
  }
  switch (rows) {
    case 8: FP_F32_KERNEL(8) break;
    case 7: FP_F32_KERNEL(7) break;
    case 6: FP_F32_KERNEL(6) break;
    case 5: FP_F32_KERNEL(5) break;
    case 4: FP_F32_KERNEL(4) break;
    case 3: FP_F32_KERNEL(3) break;
    case 2: FP_F32_KERNEL(2) break;
    default: FP_F32_KERNEL(1) break;
  }
#undef FP_F32_KERNEL
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][1]);
  }
}

// A is bf16 with K padded to even (lda in elements, even); pairs are read as 32-bit words.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void ukernel_bf16_avx512(int rows, const uint16_t* A,
                                                                              int64_t lda, const uint16_t* Bp,
                                                                              int64_t pairs, float* C, int64_t ldc,
                                                                              int nv, bool first) {
  __m512 acc[MR][2];
  __mmask16 m0 = nv >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nv) - 1);
  __mmask16 m1 = nv >= 32 ? 0xFFFF : nv <= 16 ? 0 : static_cast<__mmask16>((1u << (nv - 16)) - 1);
  for (int r = 0; r < MR; ++r) {
    if (r < rows && !first) {
      acc[r][0] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
      acc[r][1] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
#define FP_BF16_KERNEL(R)                                                                         \
  for (int64_t p = 0; p < pairs; ++p) {                                                           \
    __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + p * 2 * NR);                                  \
    __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + p * 2 * NR + 32);                             \
    for (int r = 0; r < R; ++r) {                                                                 \
      int32_t pair;                                                                               \
      std::memcpy(&pair, A + r * lda + 2 * p, 4);                                                 \
      __m512bh a = (__m512bh)_mm512_set1_epi32(pair);                                             \
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);                                             \
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);                                             \
    }                                                                                             \
  }
  switch (rows) {
    case 8: FP_BF16_KERNEL(8) break;
    case 7: FP_BF16_KERNEL(7) break;
    case 6: FP_BF16_KERNEL(6) break;
    case 5: FP_BF16_KERNEL(5) break;
    case 4: FP_BF16_KERNEL(4) break;
    case 3: FP_BF16_KERNEL(3) break;
    case 2: FP_BF16_KERNEL(2) break;
    default: FP_BF16_KERNEL(1) break;
  }
#undef FP_BF16_KERNEL
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][1]);
  }
}

// Portable kernel, plain loops the compiler vectorises; cloned for AVX2+FMA and baseline.
__attribute__((target_clones("avx2,fma", "default"))) void ukernel_f32_portable(int rows, const float* A,
                                                                                int64_t lda, const float* Bp,
                                                                                int64_t kc, float* C, int64_t ldc,
                                                                                int nv, bool first) {
  float acc[MR][NR];
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < NR; ++j) acc[r][j] = (!first && j < nv) ? C[r * ldc + j] : 0.0f;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = Bp + k * NR;
    for (int r = 0; r < rows; ++r) {
      float a = A[r * lda + k];
      for (int j = 0; j < NR; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < nv; ++j) C[r * ldc + j] = acc[r][j];
  }
}

enum class Kernel { f32_avx512, bf16_avx512, f32_portable };

Kernel pick(Compute c) {
  if (g_force_portable || !cpu_has_avx512()) return Kernel::f32_portable;
  if (c == Compute::BF16 && cpu_has_avx512bf16()) return Kernel::bf16_avx512;
  return Kernel::f32_avx512;
}

// Rounds A to bf16 values kept as floats, so that portable/F32 kernels compute what the BF16
// path computes when the CPU has no bf16 instructions.
std::vector<float> round_rows_bf16(const float* A, int64_t lda, int64_t M, int64_t K) {
  std::vector<float> out(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[static_cast<size_t>(m * K + k)] = bf16_to_f32(f32_to_bf16(A[m * lda + k]));
  }
  return out;
}

}  // namespace

const char* gemm_kernel_name(Compute c) {
  switch (pick(c)) {
    case Kernel::bf16_avx512: return "avx512-bf16";
    case Kernel::f32_avx512: return "avx512";
    case Kernel::f32_portable: return cpu_has_avx2() ? "avx2" : "generic";
  }
  return "generic";
}

void gemm_force_portable(bool on) { g_force_portable = on; }

void gemm(const float* A, int64_t lda, const BMatrix& B, float* C, int64_t ldc, int64_t M, int64_t N, int64_t K,
          Compute compute, bool parallel) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0.0f);
    return;
  }
  Kernel kernel = pick(compute);
  // BF16 compute without bf16 instructions: same rounding of A (and of B while packing).
  std::vector<float> rounded;
  bool round_b = false;
  if (compute == Compute::BF16 && kernel != Kernel::bf16_avx512) {
    rounded = round_rows_bf16(A, lda, M, K);
    A = rounded.data();
    lda = K;
    round_b = true;
  }
  // bf16 copy of A, K padded to even.
  std::vector<uint16_t> abf;
  int64_t lda16 = (K + 1) & ~int64_t{1};
  if (kernel == Kernel::bf16_avx512) {
    abf.assign(static_cast<size_t>(M * lda16), 0);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < K; ++k) abf[static_cast<size_t>(m * lda16 + k)] = f32_to_bf16(A[m * lda + k]);
    }
  }
  int64_t blocks = (N + NC - 1) / NC;
  auto work = [&](int, int64_t b_begin, int64_t b_end) {
    std::vector<float> row(KC);
    std::vector<float> packed_f32(kernel == Kernel::bf16_avx512 ? 0 : static_cast<size_t>(NC) * KC);
    std::vector<uint16_t> packed_bf16(kernel == Kernel::bf16_avx512 ? static_cast<size_t>(NC) * KC : 0);
    for (int64_t blk = b_begin; blk < b_end; ++blk) {
      int64_t n_begin = blk * NC, n_end = std::min(N, n_begin + NC);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int64_t kc = std::min<int64_t>(KC, K - k0);
        bool first = k0 == 0;
        int panels = static_cast<int>((n_end - n_begin + NR - 1) / NR);
        for (int pnl = 0; pnl < panels; ++pnl) {
          int64_t n0 = n_begin + pnl * NR;
          if (kernel == Kernel::bf16_avx512) {
            pack_bf16(B, n0, N, k0, kc, packed_bf16.data() + static_cast<size_t>(pnl) * NR * KC, row.data());
          } else {
            float* dst = packed_f32.data() + static_cast<size_t>(pnl) * NR * KC;
            pack_f32(B, n0, N, k0, kc, dst, row.data());
            if (round_b) {
              for (int64_t i = 0; i < kc * NR; ++i) dst[i] = bf16_to_f32(f32_to_bf16(dst[i]));
            }
          }
        }
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
          int rows = static_cast<int>(std::min<int64_t>(MR, M - m0));
          for (int pnl = 0; pnl < panels; ++pnl) {
            int64_t n0 = n_begin + pnl * NR;
            int nv = static_cast<int>(std::min<int64_t>(NR, N - n0));
            float* c = C + m0 * ldc + n0;
            switch (kernel) {
              case Kernel::bf16_avx512:
                ukernel_bf16_avx512(rows, abf.data() + m0 * lda16 + k0, lda16,
                                    packed_bf16.data() + static_cast<size_t>(pnl) * NR * KC, (kc + 1) / 2, c, ldc, nv,
                                    first);
                break;
              case Kernel::f32_avx512:
                ukernel_f32_avx512(rows, A + m0 * lda + k0, lda, packed_f32.data() + static_cast<size_t>(pnl) * NR * KC,
                                   kc, c, ldc, nv, first);
                break;
              case Kernel::f32_portable:
                ukernel_f32_portable(rows, A + m0 * lda + k0, lda,
                                     packed_f32.data() + static_cast<size_t>(pnl) * NR * KC, kc, c, ldc, nv, first);
                break;
            }
          }
        }
      }
    }
  };
  if (parallel) {
    ThreadPool::global().parallel_for(blocks, work);
  } else {
    work(0, 0, blocks);
  }
}

}  // namespace fluxpipe::cpu
