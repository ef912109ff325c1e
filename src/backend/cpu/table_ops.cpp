#include "backend/cpu/table_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fluxpipe::cpu {

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t H = table.size(1), N = ids.numel();
  const size_t row_bytes = bytes_for(table.dtype(), H);
  const int32_t* id = ids.data<int32_t>();
  for (int64_t i = 0; i < N; ++i) {
    to_f32(table.dtype(), table.data<uint8_t>() + static_cast<size_t>(id[i]) * row_bytes, out.data<float>() + i * H, H);
  }
}

void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out) {
  const int64_t heads = table.size(1), Lq = buckets.size(0), Lk = buckets.size(1), B = out.size(0);
  const float* tv = table.data<float>();
  const int32_t* bk = buckets.data<int32_t>();
  const float* mv = mask ? mask->data<float>() : nullptr;
  float* o = out.data<float>();
  const float lowest = std::numeric_limits<float>::lowest();
  for (int64_t i = 0; i < Lq; ++i) {
    for (int64_t j = 0; j < Lk; ++j) {
      const int64_t bucket = bk[i * Lk + j];
      for (int64_t b = 0; b < B; ++b) {
        float add = mv ? (1.0f - mv[b * Lk + j]) * lowest : 0.0f;
        for (int64_t h = 0; h < heads; ++h) o[((b * heads + h) * Lq + i) * Lk + j] = tv[bucket * heads + h] + add;
      }
    }
  }
}

void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out) {
  const int64_t B = t.size(0), dim = out.size(1);
  const int half = static_cast<int>(dim / 2);
  std::vector<float> freqs(static_cast<size_t>(half));
  const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
  for (int i = 0; i < half; ++i) freqs[static_cast<size_t>(i)] = std::exp(static_cast<float>(i) * neg_log / static_cast<float>(half));
  const float* tv = t.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    float scaled = time_factor * tv[b];
    for (int i = 0; i < half; ++i) {
      float arg = scaled * freqs[static_cast<size_t>(i)];
      o[b * dim + i] = std::cos(arg);
      o[b * dim + half + i] = std::sin(arg);
    }
  }
}

void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin) {
  const int64_t B = ids.size(0), L = ids.size(1), A = ids.size(2), pairs = cos.size(2);
  const float* idv = ids.data<float>();
  float* co = cos.data<float>();
  float* so = sin.data<float>();
  for (int64_t bl = 0; bl < B * L; ++bl) {
    int j0 = 0;
    for (int64_t a = 0; a < A; ++a) {
      int d = axes_dim[static_cast<size_t>(a)];
      double pos = idv[bl * A + a];
      for (int j = 0; j < d / 2; ++j) {
        double omega = 1.0 / std::pow(theta, static_cast<double>(2 * j) / d);
        double angle = pos * omega;
        co[bl * pairs + j0 + j] = static_cast<float>(std::cos(angle));
        so[bl * pairs + j0 + j] = static_cast<float>(std::sin(angle));
      }
      j0 += d / 2;
    }
  }
}

void to_u8(const Tensor& image, Tensor& out) {
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  const float* v = image.data<float>();
  uint8_t* o = out.data<uint8_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          float f = v[((b * 3 + ch) * H + y) * W + x];
          f = std::min(1.0f, std::max(-1.0f, f));
          o[((b * H + y) * W + x) * 3 + ch] = static_cast<uint8_t>(127.5f * (f + 1.0f));
        }
}

void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0, Tensor& acc,
                Tensor* wsum) {
  const int64_t C = tile.size(1), th = tile.size(2), tw = tile.size(3), H = acc.size(2), W = acc.size(3);
  const float* src = tile.data<float>();
  const float* fy = wy.data<float>();
  const float* fx = wx.data<float>();
  for (int64_t ch = 0; ch < C; ++ch) {
    for (int64_t y = 0; y < th; ++y) {
      float* dst = acc.data<float>() + ((b * C + ch) * H + y0 + y) * W + x0;
      const float* row = src + (ch * th + y) * tw;
      for (int64_t x = 0; x < tw; ++x) dst[x] += fy[y] * fx[x] * row[x];
    }
  }
  if (wsum) {
    for (int64_t y = 0; y < th; ++y) {
      float* ws = wsum->data<float>() + (y0 + y) * W + x0;
      for (int64_t x = 0; x < tw; ++x) ws[x] += fy[y] * fx[x];
    }
  }
}

}  // namespace fluxpipe::cpu
