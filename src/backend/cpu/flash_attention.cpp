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

// Running state of the online softmax for QR query rows, in base 2: scores are taken as
// t = s * scale * log2(e), so that e^(scale (s - s_max)) = 2^(t - t_max) and the multiply by
// log2(e) folds into the one by the scale.
struct RowState {
  alignas(64) float m[QR];        // the max (in t) each row's probabilities are taken against
  alignas(64) float l[QR * 16];   // each row's sum of probabilities, as 16 partial sums
};

// Keep a row's max unless a chunk's scores exceed it by more than this (in t, i.e. log2 units):
// the probabilities then stay below 2^12 (fine in bf16 and F32) and the row's output is rescaled
// only when the max really moves — after the first chunks, rarely.
constexpr float kMaxSlack = 12.0f;

// One chunk of QR rows: scores s[r * KCH + j], j < valid (raw Q·Kᵀ) -> probabilities
// p[r * KCH + j] as bf16 (zero past `valid`), the running state updated and each row's output
// acc[r * D ..] rescaled where its max moved. REQUIRES scale > 0.
FP_FLASH void online_softmax_chunk(const float* s, int64_t valid, float scale, RowState& st, uint16_t* p, float* acc,
                                   int64_t D) {
  const float scale2 = scale * 1.44269504088896341f;   // log2(e)
  const __m512 sc = _mm512_set1_ps(scale2);
  alignas(64) float m_new[QR];
  for (int64_t r = 0; r < QR; ++r) {
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < valid; j += 16) {
      __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (valid - j)) - 1);
      mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, s + r * KCH + j));
    }
    const float chunk_max = _mm512_reduce_max_ps(mx) * scale2;   // scale2 > 0: the max of the products
    m_new[r] = chunk_max > st.m[r] + kMaxSlack ? chunk_max : st.m[r];   // -inf before the first chunk
  }
  alignas(64) float alpha[QR];   // 2^(m_old - m_new): 0 for the first chunk, 1 where the max stays
  for (int64_t r = 0; r < QR; r += 16) {
    _mm512_store_ps(alpha + r, exp2_512(_mm512_sub_ps(_mm512_load_ps(st.m + r), _mm512_load_ps(m_new + r))));
  }
  for (int64_t r = 0; r < QR; ++r) {
    const __m512 mv = _mm512_set1_ps(m_new[r]);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < KCH; j += 16) {
      __mmask16 k = valid - j >= 16 ? __mmask16(0xFFFF) : valid - j <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << (valid - j)) - 1);
      __m512 e = _mm512_maskz_mov_ps(k, exp2_512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, s + r * KCH + j), sc, mv)));
      sum = _mm512_add_ps(sum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + r * KCH + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
    }
    if (m_new[r] != st.m[r]) {
      const __m512 a = _mm512_set1_ps(alpha[r]);
      _mm512_store_ps(st.l + r * 16, _mm512_fmadd_ps(_mm512_load_ps(st.l + r * 16), a, sum));
      float* o = acc + r * D;
      for (int64_t d = 0; d < D; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), a));
      st.m[r] = m_new[r];
    } else {
      _mm512_store_ps(st.l + r * 16, _mm512_add_ps(_mm512_load_ps(st.l + r * 16), sum));
    }
  }
}

// A row's sum of probabilities from its partial sums.
FP_FLASH float row_sum(const RowState& st, int64_t r) { return _mm512_reduce_add_ps(_mm512_load_ps(st.l + r * 16)); }

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
  if (!ok || !g_enabled || D % PW != 0 || D > 256 || Lk == 0 || Lq == 0 || !(scale > 0.0f)) return false;
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
    alignas(64) float s[QR * KCH], acc[QR * 256];
    alignas(64) uint16_t p[QR * KCH];
    RowState st;
    amx_begin();
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t bh = u / qblocks, i0 = (u % qblocks) * QR;
      const uint16_t* qrows = QB + (bh * Lqp + i0) * D;
      std::fill(acc, acc + QR * D, 0.0f);
      std::fill(st.m, st.m + QR, -std::numeric_limits<float>::infinity());
      std::fill(st.l, st.l + QR * 16, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t t = 0; t < KCH / PW; ++t) {
          amx_tile_product(qrows, D, KB + bh * Lkp * D + (c * (KCH / PW) + t) * D * PW, D, s + t * PW, KCH, true);
        }
        const int64_t valid = std::min(KCH, Lk - c * KCH);
        online_softmax_chunk(s, valid, scale, st, p, acc, D);
        for (int64_t t = 0; t < D / PW; ++t) {
          amx_tile_product(p, KCH, VB + bh * Lkp * D + (c * (D / PW) + t) * KCH * PW, KCH, acc + t * PW, D, false);
        }
      }
      const int64_t rows = std::min(QR, Lq - i0);
      for (int64_t r = 0; r < rows; ++r) {
        const float inv = 1.0f / row_sum(st, r);
        float* o = O + (bh * Lq + i0 + r) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[r * D + d] * inv;
      }
    }
    amx_end();
  });
  return true;
}

}  // namespace fluxpipe::cpu
