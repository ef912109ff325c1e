#include "backend/cpu/flash_attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/gemm.h"
#include "backend/cpu/vec_math.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

#define FP_FLASH __attribute__((target("avx512f,avx512dq,avx512bw,avx512bf16")))

constexpr int64_t QR = 32;    // query rows per unit (one AMX C block)
constexpr int64_t KCH = 128;  // keys per chunk
constexpr int64_t PW = 32;    // columns per AMX panel

// Row r of the current chunk: scores s[0..valid) (raw Q·Kᵀ) -> probabilities p[0..KCH) as bf16
// (zero past `valid`), with the running max *m and sum *l updated and the row's output o[0..D)
// rescaled to the new max.
FP_FLASH void online_softmax_row(const float* s, int64_t valid, float scale, float* m, float* l, uint16_t* p, float* o,
                                 int64_t D) {
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < valid; j += 16) {
    __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (valid - j)) - 1);
    mx = _mm512_mask_max_ps(mx, k, mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), sc));
  }
  const float m_new = std::max(*m, _mm512_reduce_max_ps(mx));
  const float alpha = std::exp(*m - m_new);   // 0 for the first chunk (m = -inf)
  const __m512 mv = _mm512_set1_ps(m_new);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < KCH; j += 16) {
    __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : valid - j <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << (valid - j)) - 1);
    __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, s + j), sc, mv)));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
  }
  *l = *l * alpha + _mm512_reduce_add_ps(sum);
  if (alpha != 1.0f) {
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), a));
  }
  *m = m_new;
}

// K of one head [L, D] -> panels of 32 keys: P[((panel * D/2 + p) * 32 + j) * 2 + e] = K[32 panel + j, 2p + e].
// A key's row, rounded to bf16, is D/2 words that go to stride-32 word slots.
void pack_keys(const float* K, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  std::vector<uint16_t> row(static_cast<size_t>(D));
  uint32_t* words = reinterpret_cast<uint32_t*>(out);
  for (int64_t key = 0; key < Lp; ++key) {
    if (key < L) {
      f32_row_to_bf16(K + key * D, row.data(), D);
    } else {
      std::fill(row.begin(), row.end(), uint16_t{0});
    }
    const uint32_t* rw = reinterpret_cast<const uint32_t*>(row.data());
    uint32_t* panel = words + (key / PW) * (D / 2) * PW + key % PW;
    for (int64_t p = 0; p < D / 2; ++p) panel[p * PW] = rw[p];
  }
}

// V of one head [L, D] -> per chunk of 128 keys, D/32 panels of 32 dims:
// P[(((c * D/32 + t) * KCH/2 + p) * 32 + j) * 2 + e] = V[c KCH + 2p + e, 32 t + j]: a pair of keys'
// rows, rounded to bf16, interleaved element by element.
void pack_values(const float* V, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  std::vector<uint16_t> r0(static_cast<size_t>(D)), r1(static_cast<size_t>(D));
  for (int64_t key = 0; key < Lp; key += 2) {
    for (int e = 0; e < 2; ++e) {
      std::vector<uint16_t>& r = e == 0 ? r0 : r1;
      if (key + e < L) {
        f32_row_to_bf16(V + (key + e) * D, r.data(), D);
      } else {
        std::fill(r.begin(), r.end(), uint16_t{0});
      }
    }
    const int64_t c = key / KCH, pp = (key % KCH) / 2;
    for (int64_t t = 0; t < D / PW; ++t) {
      uint16_t* P = out + ((c * (D / PW) + t) * (KCH / 2) + pp) * PW * 2;
      for (int64_t j = 0; j < PW; ++j) {
        P[2 * j] = r0[static_cast<size_t>(t * PW + j)];
        P[2 * j + 1] = r1[static_cast<size_t>(t * PW + j)];
      }
    }
  }
}

void pack_queries(const float* Q, int64_t L, int64_t Lp, int64_t D, uint16_t* out) {
  for (int64_t i = 0; i < L; ++i) f32_row_to_bf16(Q + i * D, out + i * D, D);
  std::fill(out + L * D, out + Lp * D, uint16_t{0});
}

bool g_enabled = true;

}  // namespace

void flash_attention_enable(bool on) { g_enabled = on; }

bool flash_attention_amx(const Tensor& q, const Tensor& k, const Tensor& v, float scale, Tensor& out) {
  static const bool ok = gemm_has_amx() && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512bw");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
  if (!ok || !g_enabled || D % PW != 0 || D > 256 || Lk == 0 || Lq == 0) return false;
  const int64_t BH = B * H, Lqp = (Lq + QR - 1) / QR * QR, Lkp = (Lk + KCH - 1) / KCH * KCH, chunks = Lkp / KCH;
  Tensor qb = Tensor::empty({BH * Lqp * D}, DType::I16), kb = Tensor::empty({BH * Lkp * D}, DType::I16),
         vb = Tensor::empty({BH * Lkp * D}, DType::I16);
  uint16_t *QB = reinterpret_cast<uint16_t*>(qb.data<int16_t>()), *KB = reinterpret_cast<uint16_t*>(kb.data<int16_t>()),
           *VB = reinterpret_cast<uint16_t*>(vb.data<int16_t>());
  const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
  ThreadPool::global().parallel_for(BH, [&](int, int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh) {
      pack_queries(Q + bh * Lq * D, Lq, Lqp, D, QB + bh * Lqp * D);
      pack_keys(K + bh * Lk * D, Lk, Lkp, D, KB + bh * Lkp * D);
      pack_values(V + bh * Lk * D, Lk, Lkp, D, VB + bh * Lkp * D);
    }
  });
  float* O = out.data<float>();
  const int64_t qblocks = Lqp / QR;
  ThreadPool::global().parallel_for(BH * qblocks, [&](int, int64_t u0, int64_t u1) {
    alignas(64) float s[QR * KCH], acc[QR * 256], m[QR], l[QR];
    alignas(64) uint16_t p[QR * KCH];
    amx_begin();
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t bh = u / qblocks, i0 = (u % qblocks) * QR;
      const uint16_t* qrows = QB + (bh * Lqp + i0) * D;
      std::fill(acc, acc + QR * D, 0.0f);
      std::fill(m, m + QR, -std::numeric_limits<float>::infinity());
      std::fill(l, l + QR, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t t = 0; t < KCH / PW; ++t) {
          amx_tile_product(qrows, D, KB + bh * Lkp * D + (c * (KCH / PW) + t) * D * PW, D, s + t * PW, KCH, true);
        }
        const int64_t valid = std::min(KCH, Lk - c * KCH);
        for (int64_t r = 0; r < QR; ++r) online_softmax_row(s + r * KCH, valid, scale, m + r, l + r, p + r * KCH, acc + r * D, D);
        for (int64_t t = 0; t < D / PW; ++t) {
          amx_tile_product(p, KCH, VB + bh * Lkp * D + (c * (D / PW) + t) * KCH * PW, KCH, acc + t * PW, D, false);
        }
      }
      const int64_t rows = std::min(QR, Lq - i0);
      for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / l[r];
        float* o = O + (bh * Lq + i0 + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
      }
    }
    amx_end();
  });
  return true;
}

}  // namespace fluxpipe::cpu
