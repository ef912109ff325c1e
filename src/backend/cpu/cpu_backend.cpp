// The CPU backend: GEMM-based linear, attention and convolution (gemm.cpp), and row-wise
// loops for the rest, split over the global thread pool by rows (one row is always
// handled by one thread, so results do not depend on the thread count).
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/activations.h"
#include "backend/cpu/flash_attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/onednn_conv.h"
#include "backend/cpu/onednn_gemm.h"
#include "backend/cpu/scratch.h"
#include "backend/cpu/table_ops.h"
#include "backend/cpu/winograd.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace fluxpipe {
namespace {

using cpu::BMatrix;

BMatrix as_b(const Tensor& w) {
  return {w.dtype(), w.data<uint8_t>(), static_cast<int64_t>(bytes_for(w.dtype(), w.size(-1))), &w.storage()};
}

void for_rows(int64_t rows, int64_t cost_per_row, const std::function<void(int64_t, int64_t)>& fn) {
  if (rows * cost_per_row < 32768) {
    fn(0, rows);
    return;
  }
  ThreadPool::global().parallel_for(rows, [&](int, int64_t b, int64_t e) { fn(b, e); });
}

float unary_f(Unary op, float x) {
  switch (op) {
    case Unary::gelu_tanh: return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Unary::gelu_erf: return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f));
    case Unary::silu: return x / (1.0f + std::exp(-x));
    case Unary::quick_gelu: return x / (1.0f + std::exp(-1.702f * x));
  }
  return x;
}

// Softmax of one row in place: float max, exp (vectorised where AVX-512 or AVX2 exists), double sum.
void softmax_row(float* x, int64_t n) {
  if (cpu::softmax_avx512(x, n)) return;
  if (cpu::softmax_avx2(x, n)) return;
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -std::numeric_limits<float>::infinity()) {   // fully masked row: no attention
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  double sum = 0;
  if (!cpu::exp_shifted_avx512(x, n, mx, &sum)) {
    for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  }
  float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::CPU; }

  std::shared_ptr<Storage> allocate(size_t bytes) override { return allocate_cpu(bytes, false); }
  void transfer(const Tensor& src, Tensor& dst) override {
    if (src.device() != Device::CPU || dst.device() != Device::CPU) {
      throw InternalError("[transfer] the CPU backend copies host tensors only, not " + src.describe() + " to " + dst.describe());
    }
    if (src.nbytes()) std::memcpy(dst.data<uint8_t>(), src.data<uint8_t>(), src.nbytes());
  }
  void zero(Tensor& out) override {
    if (out.nbytes()) std::memset(out.data<uint8_t>(), 0, out.nbytes());
  }
  size_t release_weight_copies(const Storage& of) override {
    return cpu::release_packed_weights(&of) + cpu::release_conv_weights(&of) + cpu::winograd_release(&of);
  }
  size_t weight_copy_bytes(const Tensor& w) const override { return cpu::winograd_copy_bytes(w); }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Compute c) override {
    int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    std::vector<float> widened;
    const float* A = x.data<float>();
    if (x.dtype() != DType::F32) {
      widened.resize(static_cast<size_t>(M * K));
      to_f32(x.dtype(), x.data<uint8_t>(), widened.data(), M * K);
      A = widened.data();
    }
    std::vector<float> bv = bias ? bias->to_floats() : std::vector<float>();
    cpu::gemm(A, K, as_b(w), out.data<float>(), N, M, N, K, c, true, bias ? bv.data() : nullptr);
  }

  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
                 Tensor& out, Compute c) override {
    int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
    const float* Q = q.data<float>();
    const float* Kp = k.data<float>();
    const float* V = v.data<float>();
    const float* Bi = bias ? bias->data<float>() : nullptr;
    float* O = out.data<float>();
    // Long sequences: one head at a time, query rows in blocks of QB, each product a large
    // parallel GEMM (scores are QB x Lk, never Lq x Lk). Short ones: many small single-thread
    // products in parallel over (head, block).
    const bool long_seq = Lq * Lk >= 256 * 256;
    if (long_seq && c == Compute::BF16 && !bias && !causal && cpu::flash_attention_bf16(q, k, v, scale, out)) return;
    // oneDNN has bf16 products only with bf16 instructions: below that level, do not convert a
    // head and fail a primitive on every call to find out.
    if (long_seq && c == Compute::BF16 && cpu::isa_at_least(cpu::Isa::avx512bf16) &&
        attention_bf16(q, k, v, scale, bias, causal, out)) {
      return;
    }
    const int64_t QB = long_seq ? 2048 : 64;
    const int64_t qblocks = (Lq + QB - 1) / QB;
    float* vt = cpu::scratch<float>(4, static_cast<size_t>(long_seq ? D * Lk : B * H * D * Lk));   // vᵀ: P·V is A·Bᵀ
    auto transpose_v = [&](int64_t bh, float* dst) {
      for (int64_t j = 0; j < Lk; ++j)
        for (int64_t d = 0; d < D; ++d) dst[d * Lk + j] = V[(bh * Lk + j) * D + d];
    };
    auto scores_to_probs = [&](float* s, int64_t rows, int64_t b, int64_t h, int64_t i0) {
      for_rows(rows, Lk * 8, [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) {
          float* row = s + i * Lk;
          const float* brow = nullptr;
          if (Bi) {
            int64_t bb = bias->size(0) == 1 ? 0 : b, hh = bias->size(1) == 1 ? 0 : h;
            brow = Bi + ((bb * bias->size(1) + hh) * Lq + i0 + i) * Lk;
          }
          for (int64_t j = 0; j < Lk; ++j) {
            row[j] = row[j] * scale + (brow ? brow[j] : 0.0f);
            if (causal && j > i0 + i) row[j] = -std::numeric_limits<float>::infinity();
          }
          softmax_row(row, Lk);
        }
      });
    };
    if (long_seq) {
      float* s = cpu::scratch<float>(5, static_cast<size_t>(QB * Lk));
      for (int64_t bh = 0; bh < B * H; ++bh) {
        transpose_v(bh, vt);
        BMatrix kb{DType::F32, reinterpret_cast<const uint8_t*>(Kp + bh * Lk * D), D * 4};
        BMatrix vb{DType::F32, reinterpret_cast<const uint8_t*>(vt), Lk * 4};
        for (int64_t i0 = 0; i0 < Lq; i0 += QB) {
          int64_t rows = std::min(QB, Lq - i0);
          cpu::gemm(Q + (bh * Lq + i0) * D, D, kb, s, Lk, rows, Lk, D, c, true);
          scores_to_probs(s, rows, bh / H, bh % H, i0);
          cpu::gemm(s, Lk, vb, O + (bh * Lq + i0) * D, D, rows, D, Lk, c, true);
        }
      }
      return;
    }
    for_rows(B * H, Lk * D, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh) transpose_v(bh, vt + bh * D * Lk);
    });
    ThreadPool::global().parallel_for(B * H * qblocks, [&](int, int64_t ub, int64_t ue) {
      std::vector<float> s(static_cast<size_t>(QB * Lk));
      for (int64_t u = ub; u < ue; ++u) {
        int64_t bh = u / qblocks, i0 = (u % qblocks) * QB, rows = std::min(QB, Lq - i0);
        BMatrix kb{DType::F32, reinterpret_cast<const uint8_t*>(Kp + bh * Lk * D), D * 4};
        cpu::gemm(Q + (bh * Lq + i0) * D, D, kb, s.data(), Lk, rows, Lk, D, c, false);
        scores_to_probs(s.data(), rows, bh / H, bh % H, i0);
        BMatrix vb{DType::F32, reinterpret_cast<const uint8_t*>(vt + bh * D * Lk), Lk * 4};
        cpu::gemm(s.data(), Lk, vb, O + (bh * Lq + i0) * D, D, rows, D, Lk, c, false);
      }
    });
  }

  // Long sequences in BF16: Q, K and V rounded to bf16 once per head; S = scale·Q·Kᵀ and
  // O = P·V as oneDNN products that read K and V in place (no transposes, no widening per
  // block); probabilities rounded to bf16 straight from the softmax. The rounding points are
  // those of the generic path. False when oneDNN cannot run it (the generic path then does).
  bool attention_bf16(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
                      Tensor& out) {
    const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
    const int64_t QB = 1024;   // query rows per block (measured: 1024 beats 128 and 256 by 20-40% at L = 512 and 1280)
    const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>(), *Bi = bias ? bias->data<float>() : nullptr;
    float* O = out.data<float>();
    uint16_t* qb = cpu::scratch<uint16_t>(6, static_cast<size_t>(Lq * D));
    uint16_t* kb = cpu::scratch<uint16_t>(7, static_cast<size_t>(Lk * D));
    uint16_t* vb = cpu::scratch<uint16_t>(8, static_cast<size_t>(Lk * D));
    float* s = cpu::scratch<float>(5, static_cast<size_t>(std::min(QB, Lq) * Lk));
    uint16_t* p = cpu::scratch<uint16_t>(9, static_cast<size_t>(std::min(QB, Lq) * Lk));
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      cpu::convert_rows_bf16(Q + bh * Lq * D, D, Lq, D, qb, D);
      cpu::convert_rows_bf16(K + bh * Lk * D, D, Lk, D, kb, D);
      cpu::convert_rows_bf16(V + bh * Lk * D, D, Lk, D, vb, D);
      for (int64_t i0 = 0; i0 < Lq; i0 += QB) {
        const int64_t rows = std::min(QB, Lq - i0);
        // Kᵀ in place: element (d, j) of Kᵀ is kb[j * D + d].
        if (!cpu::onednn_matmul_bf16(qb + i0 * D, D, kb, 1, D, s, Lk, rows, Lk, D, scale)) return false;
        for_rows(rows, Lk * 8, [&](int64_t r0, int64_t r1) {
          for (int64_t i = r0; i < r1; ++i) {
            float* row = s + i * Lk;
            if (Bi) {
              int64_t bb = bias->size(0) == 1 ? 0 : b, hh = bias->size(1) == 1 ? 0 : h;
              const float* brow = Bi + ((bb * bias->size(1) + hh) * Lq + i0 + i) * Lk;
              for (int64_t j = 0; j < Lk; ++j) row[j] += brow[j];
            }
            if (causal) {
              for (int64_t j = i0 + i + 1; j < Lk; ++j) row[j] = -std::numeric_limits<float>::infinity();
            }
            softmax_row(row, Lk);
            cpu::f32_row_to_bf16(row, p + i * Lk, Lk);
          }
        });
        if (!cpu::onednn_matmul_bf16(p, Lk, vb, D, 1, O + (bh * Lq + i0) * D, D, rows, D, Lk, 1.0f)) return false;
      }
    }
    return true;
  }

  // A row's mean (as float) and 1 / sqrt(variance + eps), accumulated in double.
  static void layer_norm_stats(const float* xr, int64_t D, float eps, float* mean_f, float* inv) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < D; ++i) mean += xr[i];
    mean /= static_cast<double>(D);
    for (int64_t i = 0; i < D; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    *inv = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(D) + eps));
    *mean_f = static_cast<float>(mean);
  }

  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
    int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    std::vector<float> wv = w ? w->to_floats() : std::vector<float>(), bv = b ? b->to_floats() : std::vector<float>();
    const float* X = x.data<float>();
    float* O = out.data<float>();
    for_rows(rows, D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = X + r * D;
        float mf, inv;
        layer_norm_stats(xr, D, eps, &mf, &inv);
        for (int64_t i = 0; i < D; ++i) {
          float y = (xr[i] - mf) * inv;
          if (w) y *= wv[static_cast<size_t>(i)];
          if (b) y += bv[static_cast<size_t>(i)];
          O[r * D + i] = y;
        }
      }
    });
  }

  // Each statement rounds once, as the separate ops do (this file is built without FMA
  // contraction: baseline x86-64), so the fused ops are bit-identical to the unfused sequence.
  void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) override {
    int64_t L = x.size(1), D = x.size(2), rows = x.size(0) * L;
    const float *X = x.data<float>(), *Sh = shift.data<float>(), *Sc = scale.data<float>();
    float* O = out.data<float>();
    for_rows(rows, D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = X + r * D;
        const float *sh = Sh + (r / L) * D, *sc = Sc + (r / L) * D;
        float mf, inv;
        layer_norm_stats(xr, D, eps, &mf, &inv);
        float* o = O + r * D;
        for (int64_t i = 0; i < D; ++i) {
          float y = (xr[i] - mf) * inv;
          float s1 = sc[i] + 1.0f;
          float m = s1 * y;
          o[i] = m + sh[i];
        }
      }
    });
  }

  void add_gated(const Tensor& x, const Tensor& gate, const Tensor& y, Tensor& out) override {
    int64_t L = x.size(1), D = x.size(2), rows = x.size(0) * L;
    const float *X = x.data<float>(), *G = gate.data<float>(), *Y = y.data<float>();
    float* O = out.data<float>();
    for_rows(rows, D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float *xr = X + r * D, *yr = Y + r * D, *g = G + (r / L) * D;
        float* o = O + r * D;
        for (int64_t i = 0; i < D; ++i) {
          float m = g[i] * yr[i];
          o[i] = xr[i] + m;
        }
      }
    });
  }

  // 1 / sqrt(mean(x^2) + eps) of a row, the squares summed in double (over 16 lanes in a fixed
  // order where AVX-512 is, else one after another): rms_norm's and qkv_heads' one statistic.
  static float rms_inverse(const float* xr, int64_t D, float eps) {
    double ms = 0;
    if (!cpu::squared_deviation_avx512(xr, D, 0.0, &ms)) {
      for (int64_t i = 0; i < D; ++i) ms += static_cast<double>(xr[i]) * xr[i];
    }
    return static_cast<float>(1.0 / std::sqrt(ms / static_cast<double>(D) + eps));
  }

  void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out) override {
    int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    std::vector<float> wv = w ? w->to_floats() : std::vector<float>();
    const float* X = x.data<float>();
    float* O = out.data<float>();
    for_rows(rows, D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = X + r * D;
        float inv = rms_inverse(xr, D, eps);
        for (int64_t i = 0; i < D; ++i) O[r * D + i] = xr[i] * inv * (w ? wv[static_cast<size_t>(i)] : 1.0f);
      }
    });
  }

  void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) override {
    int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), cg = C / groups;
    std::vector<float> wv = w ? w->to_floats() : std::vector<float>(), bv = b ? b->to_floats() : std::vector<float>();
    const float* X = x.data<float>();
    float* O = out.data<float>();
    for_rows(B * groups, cg * HW, [&](int64_t g0, int64_t g1) {
      for (int64_t ng = g0; ng < g1; ++ng) {
        int64_t n = ng / groups, g = ng % groups;
        const float* xs = X + (n * C + g * cg) * HW;
        int64_t cnt = cg * HW;
        double mean = 0, var = 0;
        if (!cpu::sum_avx512(xs, cnt, &mean)) {
          for (int64_t i = 0; i < cnt; ++i) mean += xs[i];
        }
        mean /= static_cast<double>(cnt);
        if (!cpu::squared_deviation_avx512(xs, cnt, mean, &var)) {
          for (int64_t i = 0; i < cnt; ++i) var += (xs[i] - mean) * (xs[i] - mean);
        }
        float inv = static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(cnt) + eps));
        float mf = static_cast<float>(mean);
        for (int64_t cc = 0; cc < cg; ++cc) {
          int64_t ch = g * cg + cc;
          float sc = inv * (w ? wv[static_cast<size_t>(ch)] : 1.0f), sh = b ? bv[static_cast<size_t>(ch)] : 0.0f;
          float* o = O + (n * C + ch) * HW;
          const float* xi = X + (n * C + ch) * HW;
          if (cpu::normalize_avx512(xi, o, HW, mf, sc, sh, silu)) continue;
          for (int64_t i = 0; i < HW; ++i) o[i] = (xi[i] - mf) * sc + sh;
          if (silu) {
            for (int64_t i = 0; i < HW; ++i) o[i] = o[i] / (1.0f + std::exp(-o[i]));
          }
        }
      }
    });
  }

  bool has_nhwc() const override { return true; }

  // x [B, H, W, C]: per channel and fixed chunk of pixels (the same chunks for any thread count,
  // so the result is deterministic) the sum and, while the chunk is in cache, the squared
  // deviations from the chunk's own mean; a group's variance then combines its (channel, chunk)
  // pieces exactly (Chan et al.: M2 = sum of M2_k + n_k (mean_k - mean)^2), so the tensor is read
  // from memory twice (statistics, normalization) and not three times. Normalizes 16 channels at a time.
  void group_norm_nhwc(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) override {
    const int64_t B = x.size(0), HW = x.size(1) * x.size(2), C = x.size(3), cg = C / groups;
    constexpr int64_t kChunk = 256;   // pixels
    const int64_t chunks = (HW + kChunk - 1) / kChunk;
    std::vector<float> wv = w ? w->to_floats() : std::vector<float>(), bv = b ? b->to_floats() : std::vector<float>();
    const float* X = x.data<float>();
    float* O = out.data<float>();
    // [(batch, chunk), channel]: sum, and squared deviations from the piece's mean.
    std::vector<double> sum(static_cast<size_t>(B * chunks * C)), dev(static_cast<size_t>(B * chunks * C));
    for_rows(B * chunks, 2 * kChunk * C, [&](int64_t r0, int64_t r1) {
      std::vector<double> mean(static_cast<size_t>(C));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / chunks, p0 = (r % chunks) * kChunk, np = std::min(kChunk, HW - p0);
        const float* xs = X + (n * HW + p0) * C;
        double *s_r = sum.data() + r * C, *d_r = dev.data() + r * C;
        const bool vec = cpu::channel_sums_avx512(xs, np, C, nullptr, s_r);
        if (!vec) {
          for (int64_t c = 0; c < C; ++c) s_r[c] = 0.0;
          for (int64_t p = 0; p < np; ++p) {
            for (int64_t c = 0; c < C; ++c) s_r[c] += xs[p * C + c];
          }
        }
        for (int64_t c = 0; c < C; ++c) mean[static_cast<size_t>(c)] = s_r[c] / static_cast<double>(np);
        if (vec && cpu::channel_sums_avx512(xs, np, C, mean.data(), d_r)) continue;
        for (int64_t c = 0; c < C; ++c) d_r[c] = 0.0;
        for (int64_t p = 0; p < np; ++p) {
          for (int64_t c = 0; c < C; ++c) {
            double d = xs[p * C + c] - mean[static_cast<size_t>(c)];
            d_r[c] += d * d;
          }
        }
      }
    });
    // Per (batch, group), pieces in order: chunks outer, the group's channels inner.
    const double count = static_cast<double>(cg * HW);
    std::vector<double> chan_mean(static_cast<size_t>(B * C)), group_var(static_cast<size_t>(B * groups));
    for (int64_t n = 0; n < B; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        double s = 0, m2 = 0;
        for (int64_t k = 0; k < chunks; ++k) {
          for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += sum[static_cast<size_t>((n * chunks + k) * C + c)];
        }
        const double m = s / count;
        for (int64_t k = 0; k < chunks; ++k) {
          const double nk = static_cast<double>(std::min(kChunk, HW - k * kChunk));
          for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
            const size_t i = static_cast<size_t>((n * chunks + k) * C + c);
            const double d = sum[i] / nk - m;
            m2 += dev[i] + nk * d * d;
          }
        }
        group_var[static_cast<size_t>(n * groups + g)] = m2 / count;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) chan_mean[static_cast<size_t>(n * C + c)] = m;
      }
    }
    std::vector<float> mean_f(static_cast<size_t>(B * C)), scale_f(static_cast<size_t>(B * C)), shift_f(static_cast<size_t>(B * C));
    for (int64_t n = 0; n < B; ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        float inv = static_cast<float>(1.0 / std::sqrt(group_var[static_cast<size_t>(n * groups + g)] + eps));
        for (int64_t cc = 0; cc < cg; ++cc) {
          const int64_t ch = g * cg + cc;
          const size_t i = static_cast<size_t>(n * C + ch);
          mean_f[i] = static_cast<float>(chan_mean[i]);
          scale_f[i] = inv * (w ? wv[static_cast<size_t>(ch)] : 1.0f);
          shift_f[i] = b ? bv[static_cast<size_t>(ch)] : 0.0f;
        }
      }
    }
    for_rows(B * chunks, kChunk * C, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / chunks, p0 = (r % chunks) * kChunk, np = std::min(kChunk, HW - p0);
        const float *xs = X + (n * HW + p0) * C, *m = mean_f.data() + n * C, *sc = scale_f.data() + n * C,
                    *sh = shift_f.data() + n * C;
        float* o = O + (n * HW + p0) * C;
        if (cpu::normalize_channels_avx512(xs, o, np, C, m, sc, sh, silu)) continue;
        for (int64_t i = 0; i < np * C; ++i) {
          const int64_t c = i % C;
          float y = (xs[i] - m[c]) * sc[c] + sh[c];
          o[i] = silu ? y / (1.0f + std::exp(-y)) : y;
        }
      }
    });
  }

  // RoPE of one row: pairs (x[2i], x[2i+1]) rotated by (c[i], s[i]); rope's and qkv_heads' one rotation.
  static void rotate_pairs(const float* x, const float* c, const float* s, int64_t pairs, float* o) {
    for (int64_t i = 0; i < pairs; ++i) {
      float x0 = x[2 * i], x1 = x[2 * i + 1];
      o[2 * i] = c[i] * x0 - s[i] * x1;
      o[2 * i + 1] = s[i] * x0 + c[i] * x1;
    }
  }

  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) override {
    int64_t B = x.size(0), H = x.size(1), L = x.size(2), D = x.size(3), P = D / 2;
    const float *X = x.data<float>(), *Cs = cos.data<float>(), *Sn = sin.data<float>();
    float* O = out.data<float>();
    for_rows(B * H * L, D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t b = r / (H * L), l = r % L;
        const float* c = Cs + ((cos.size(0) == 1 ? 0 : b) * L + l) * P;
        const float* s = Sn + ((cos.size(0) == 1 ? 0 : b) * L + l) * P;
        rotate_pairs(X + r * D, c, s, P, O + r * D);
      }
    });
  }

  // One pass over the qkv rows (in parallel over them), each head's query and key normed and
  // rotated in a row buffer: rms_norm's statistic and statement and rope's rotate_pairs, so the
  // results are theirs bit for bit, without the permuted copy, the norms' and rope's passes and
  // the concatenation in between.
  void qkv_heads(const std::vector<QkvPart>& parts, const Tensor& cos, const Tensor& sin, float eps, Tensor& q, Tensor& k,
                 Tensor& v) override {
    const int64_t B = q.size(0), heads = q.size(1), L = q.size(2), hd = q.size(3), H = heads * hd, P = hd / 2;
    std::vector<int64_t> begin;   // each part's first position
    std::vector<std::vector<float>> qw, kw;
    int64_t at = 0;
    for (const QkvPart& p : parts) {
      begin.push_back(at);
      at += p.qkv.size(1);
      qw.push_back(p.q_scale.to_floats());
      kw.push_back(p.k_scale.to_floats());
    }
    const float *Cs = cos.data<float>(), *Sn = sin.data<float>();
    float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
    for_rows(B * L, 3 * H, [&](int64_t r0, int64_t r1) {
      std::vector<float> y(static_cast<size_t>(hd));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / L, l = r % L;
        size_t pi = parts.size() - 1;
        while (begin[pi] > l) --pi;
        const Tensor& src = parts[pi].qkv;
        const float* row = src.data<float>() + (b * src.size(1) + (l - begin[pi])) * 3 * H;
        const int64_t cb = cos.size(0) == 1 ? 0 : b;
        const float *c = Cs + (cb * L + l) * P, *s = Sn + (cb * L + l) * P;
        for (int64_t h = 0; h < heads; ++h) {
          const size_t out = static_cast<size_t>(((b * heads + h) * L + l) * hd);
          for (int which = 0; which < 2; ++which) {   // the query, then the key
            const float* xr = row + which * H + h * hd;
            const std::vector<float>& w = which == 0 ? qw[pi] : kw[pi];
            float inv = rms_inverse(xr, hd, eps);
            for (int64_t i = 0; i < hd; ++i) y[static_cast<size_t>(i)] = xr[i] * inv * w[static_cast<size_t>(i)];
            rotate_pairs(y.data(), c, s, P, (which == 0 ? Q : K) + out);
          }
          std::memcpy(V + out, row + 2 * H + h * hd, static_cast<size_t>(hd) * sizeof(float));
        }
      }
    });
  }

  void unary(Unary op, const Tensor& x, Tensor& out) override {
    const float* X = x.data<float>();
    float* O = out.data<float>();
    int64_t n = x.numel(), chunk = 4096;
    for_rows((n + chunk - 1) / chunk, chunk, [&](int64_t b, int64_t e) {
      int64_t begin = b * chunk, end = std::min(n, e * chunk);
      if (cpu::activation_avx512(op, X + begin, O + begin, end - begin)) return;
      if (cpu::activation_avx2(op, X + begin, O + begin, end - begin)) return;
      for (int64_t i = begin; i < end; ++i) O[i] = unary_f(op, X[i]);
    });
  }

  void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) override {
    // Broadcasting by collapsing to (outer, inner) strides per operand on the fly.
    const Shape& s = out.shape();
    size_t nd = s.size();
    auto strides_for = [&](const Tensor& t) {
      Shape st(nd, 0);
      int64_t acc = 1;
      for (size_t d = nd; d-- > 0;) {
        if (d + t.shape().size() < nd) break;
        int64_t ext = t.shape()[d + t.shape().size() - nd];
        st[d] = ext == 1 ? 0 : acc;
        acc *= ext;
      }
      return st;
    };
    Shape sa = strides_for(a), sb = strides_for(b);
    int64_t inner = nd ? s.back() : 1;
    int64_t rows = inner ? out.numel() / inner : 0;
    const float *A = a.data<float>(), *Bv = b.data<float>();
    float* O = out.data<float>();
    int64_t ia_in = nd ? sa.back() : 0, ib_in = nd ? sb.back() : 0;
    for_rows(rows, inner, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t rem = r, oa = 0, ob = 0;
        for (size_t d = nd - 1; d-- > 0;) {
          int64_t idx = rem % s[d];
          rem /= s[d];
          oa += idx * sa[d];
          ob += idx * sb[d];
        }
        float* o = O + r * inner;
        for (int64_t i = 0; i < inner; ++i) {
          float x = A[oa + i * ia_in], y = Bv[ob + i * ib_in];
          o[i] = op == Binary::add ? x + y : op == Binary::sub ? x - y : op == Binary::mul ? x * y : x / y;
        }
      }
    });
  }

  void softmax(const Tensor& x, Tensor& out) override {
    int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    std::memcpy(out.data<float>(), x.data<float>(), x.nbytes());
    float* O = out.data<float>();
    for_rows(rows, D, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) softmax_row(O + r * D, D);
    });
  }

  void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out,
              Compute c) override {
    if (c == Compute::BF16 && cpu::winograd_applies(x, w, p, out)) {
      // 3 x 3 convolutions without AMX: a quarter of the products (winograd.h).
      cpu::winograd_conv3x3(x, w, bias, p, out, true);
      return;
    }
    if (c == Compute::BF16) {
      // Where the CPU (or FLUXPIPE_ISA) has bf16 instructions oneDNN's bf16 convolution; where it
      // has not, its F32 one on bf16-rounded inputs (the same products): both beat im2col here.
      bool done = cpu::isa_at_least(cpu::Isa::avx512bf16) ? cpu::onednn_conv2d_bf16(x, w, bias, p, out)
                                                          : cpu::onednn_conv2d_bf16_values_f32(x, w, bias, p, out);
      if (done) return;
    }
    if (p.layout == Layout::nhwc) {
      // The im2col path below is nchw: through it, transposing in and out (F32 compute, or
      // oneDNN declined; neither is the fast path).
      Tensor xv = x.permute({0, 3, 1, 2}), xn = Tensor::empty(xv.shape(), DType::F32);
      copy(xv, xn);
      Tensor on = Tensor::empty({out.size(0), out.size(3), out.size(1), out.size(2)}, DType::F32);
      Conv2dParams pn = p;
      pn.layout = Layout::nchw;
      conv2d(xn, w, bias, pn, on, c);
      copy(on.permute({0, 2, 3, 1}), out);
      return;
    }
    int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3);
    int64_t Co = w.size(0), KH = w.size(2), KW = w.size(3), OH = out.size(2), OW = out.size(3);
    int64_t K = Ci * KH * KW;
    // out[Co, pixels] = w[Co, K] · colsᵀ, with cols[pixel, K] gathered for a chunk of pixels at a time.
    std::vector<float> wf = w.to_floats();
    std::vector<float> bv = bias ? bias->to_floats() : std::vector<float>();
    const int64_t chunk = std::max<int64_t>(256, (int64_t{8} << 20) / std::max<int64_t>(K * 4, 1));
    std::vector<float> cols;
    std::vector<float> tile;
    const float* X = x.data<float>();
    float* O = out.data<float>();
    for (int64_t n = 0; n < B; ++n) {
      for (int64_t p0 = 0; p0 < OH * OW; p0 += chunk) {
        int64_t np = std::min(chunk, OH * OW - p0);
        cols.assign(static_cast<size_t>(np * K), 0.0f);
        for_rows(np, K, [&](int64_t b, int64_t e) {
          for (int64_t pi = b; pi < e; ++pi) {
            int64_t oy = (p0 + pi) / OW, ox = (p0 + pi) % OW;
            float* col = cols.data() + pi * K;
            for (int64_t ci = 0; ci < Ci; ++ci)
              for (int64_t ky = 0; ky < KH; ++ky) {
                int64_t iy = oy * p.stride + ky - p.pad_top;
                for (int64_t kx = 0; kx < KW; ++kx) {
                  int64_t ix = ox * p.stride + kx - p.pad_left;
                  if (iy >= 0 && iy < H && ix >= 0 && ix < W) col[(ci * KH + ky) * KW + kx] = X[((n * Ci + ci) * H + iy) * W + ix];
                }
              }
          }
        });
        tile.assign(static_cast<size_t>(Co * np), 0.0f);
        BMatrix cb{DType::F32, reinterpret_cast<const uint8_t*>(cols.data()), K * 4};
        cpu::gemm(wf.data(), K, cb, tile.data(), np, Co, np, K, c, true);
        for (int64_t co = 0; co < Co; ++co) {
          float add = bias ? bv[static_cast<size_t>(co)] : 0.0f;
          float* o = O + (n * Co + co) * OH * OW + p0;
          const float* t = tile.data() + co * np;
          for (int64_t i = 0; i < np; ++i) o[i] = t[i] + add;
        }
      }
    }
  }

  void upsample_nearest2x(const Tensor& x, Tensor& out) override {
    int64_t BC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    const float* X = x.data<float>();
    float* O = out.data<float>();
    for_rows(BC * H, 4 * W, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        int64_t c = r / H, y = r % H;
        const float* src = X + (c * H + y) * W;
        float* d0 = O + (c * 2 * H + 2 * y) * 2 * W;
        for (int64_t i = 0; i < W; ++i) d0[2 * i] = d0[2 * i + 1] = src[i];
        std::memcpy(d0 + 2 * W, d0, static_cast<size_t>(2 * W) * sizeof(float));
      }
    });
  }

  void upsample_nearest2x_nhwc(const Tensor& x, Tensor& out) override {
    const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
    const float* X = x.data<float>();
    float* O = out.data<float>();
    const size_t pixel = static_cast<size_t>(C) * sizeof(float);
    for_rows(B * H, 4 * W * C, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {   // input row r = (n, y) -> output rows 2y and 2y + 1
        const int64_t n = r / H, y = r % H;
        const float* src = X + r * W * C;
        float* d0 = O + ((n * 2 * H + 2 * y) * 2 * W) * C;
        for (int64_t i = 0; i < W; ++i) {
          std::memcpy(d0 + 2 * i * C, src + i * C, pixel);
          std::memcpy(d0 + (2 * i + 1) * C, src + i * C, pixel);
        }
        std::memcpy(d0 + 2 * W * C, d0, static_cast<size_t>(2 * W) * pixel);
      }
    });
  }

  void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) override {
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < dim; ++d) outer *= out.size(d);
    for (int d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
    float* O = out.data<float>();
    int64_t offset = 0;
    for (const Tensor& t : xs) {
      int64_t len = t.size(dim);
      const float* X = t.data<float>();
      // Rows of len * inner values: across threads (the large concats are memory-bound copies).
      for_rows(outer, len * inner, [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          std::memcpy(O + (o * out.size(dim) + offset) * inner, X + o * len * inner, static_cast<size_t>(len * inner) * 4);
        }
      });
      offset += len;
    }
  }

  void copy(const Tensor& x, Tensor& out) override {
    if (x.dtype() == DType::F32 && out.dtype() == DType::F32 && x.dim() > 0) {
      // Strided F32 -> contiguous F32, row by row over the output.
      const Shape& s = x.shape();
      const Shape& st = x.strides();
      int nd = x.dim();
      int64_t inner = s.back(), rows = inner ? x.numel() / inner : 0, istride = st.back();
      const float* X = x.data<float>();
      float* O = out.data<float>();
      for_rows(rows, inner, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t rem = r, off = 0;
          for (int d = nd - 2; d >= 0; --d) {
            off += (rem % s[static_cast<size_t>(d)]) * st[static_cast<size_t>(d)];
            rem /= s[static_cast<size_t>(d)];
          }
          float* o = O + r * inner;
          if (istride == 1) {
            std::memcpy(o, X + off, static_cast<size_t>(inner) * 4);
          } else {
            for (int64_t i = 0; i < inner; ++i) o[i] = X[off + i * istride];
          }
        }
      });
      return;
    }
    std::vector<float> f = x.to_floats();
    from_f32(out.dtype(), f.data(), out.data<uint8_t>(), out.numel());
  }

  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override { cpu::embedding(table, ids, out); }
  void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out) override {
    cpu::position_bias(table, buckets, mask, out);
  }
  void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out) override {
    cpu::timestep_embedding(t, time_factor, max_period, out);
  }
  void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin) override {
    cpu::rope_tables(ids, axes_dim, theta, cos, sin);
  }
  void to_u8(const Tensor& image, Tensor& out) override { cpu::to_u8(image, out); }
  void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0, Tensor& acc,
                  Tensor* wsum) override {
    cpu::blend_tile(tile, wy, wx, b, y0, x0, acc, wsum);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace fluxpipe
