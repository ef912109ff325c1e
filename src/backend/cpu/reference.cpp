#include "backend/cpu/reference.h"

#include <cmath>
#include <limits>

namespace fluxpipe::cpu::ref {
namespace {

std::vector<double> as_double(const Tensor& t) {
  std::vector<float> f = t.to_floats();
  return std::vector<double>(f.begin(), f.end());
}

void store(Tensor& out, const std::vector<double>& v) {
  float* o = out.data<float>();
  for (size_t i = 0; i < v.size(); ++i) o[i] = static_cast<float>(v[i]);
}

}  // namespace

double unary_value(Unary op, double x) {
  switch (op) {
    case Unary::gelu_tanh: return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case Unary::gelu_erf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Unary::silu: return x / (1.0 + std::exp(-x));
    case Unary::quick_gelu: return x / (1.0 + std::exp(-1.702 * x));
  }
  return x;
}

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  std::vector<double> X = as_double(x), W = as_double(w), B = bias ? as_double(*bias) : std::vector<double>();
  std::vector<double> O(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? B[static_cast<size_t>(n)] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += X[static_cast<size_t>(m * K + k)] * W[static_cast<size_t>(n * K + k)];
      O[static_cast<size_t>(m * N + n)] = s;
    }
  }
  store(out, O);
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
               Tensor& out) {
  int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
  std::vector<double> Q = as_double(q), Kt = as_double(k), V = as_double(v), Bi = bias ? as_double(*bias) : std::vector<double>();
  std::vector<double> O(Q.size());
  std::vector<double> s(static_cast<size_t>(Lk));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      size_t qo = static_cast<size_t>((b * H + h) * Lq * D), ko = static_cast<size_t>((b * H + h) * Lk * D);
      for (int64_t i = 0; i < Lq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Lk; ++j) {
          double d = 0;
          for (int64_t e = 0; e < D; ++e) d += Q[qo + static_cast<size_t>(i * D + e)] * Kt[ko + static_cast<size_t>(j * D + e)];
          d *= scale;
          if (bias) {
            int64_t bb = bias->size(0) == 1 ? 0 : b, bh = bias->size(1) == 1 ? 0 : h;
            d += Bi[static_cast<size_t>(((bb * bias->size(1) + bh) * Lq + i) * Lk + j)];
          }
          if (causal && j > i) d = -std::numeric_limits<double>::infinity();
          s[static_cast<size_t>(j)] = d;
          mx = std::max(mx, d);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < D; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < Lk; ++j) acc += s[static_cast<size_t>(j)] * V[ko + static_cast<size_t>(j * D + e)];
          O[qo + static_cast<size_t>(i * D + e)] = acc / sum;
        }
      }
    }
  }
  store(out, O);
}

void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) {
  int64_t D = x.size(-1), rows = x.numel() / D;
  std::vector<double> X = as_double(x), W = w ? as_double(*w) : std::vector<double>(), Bv = b ? as_double(*b) : std::vector<double>();
  std::vector<double> O(X.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < D; ++i) mean += X[static_cast<size_t>(r * D + i)];
    mean /= D;
    for (int64_t i = 0; i < D; ++i) var += std::pow(X[static_cast<size_t>(r * D + i)] - mean, 2);
    var /= D;
    for (int64_t i = 0; i < D; ++i) {
      double y = (X[static_cast<size_t>(r * D + i)] - mean) / std::sqrt(var + eps);
      O[static_cast<size_t>(r * D + i)] = y * (w ? W[static_cast<size_t>(i)] : 1.0) + (b ? Bv[static_cast<size_t>(i)] : 0.0);
    }
  }
  store(out, O);
}

void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out) {
  int64_t D = x.size(-1), rows = x.numel() / D;
  std::vector<double> X = as_double(x), W = w ? as_double(*w) : std::vector<double>();
  std::vector<double> O(X.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t i = 0; i < D; ++i) ms += X[static_cast<size_t>(r * D + i)] * X[static_cast<size_t>(r * D + i)];
    double inv = 1.0 / std::sqrt(ms / D + eps);
    for (int64_t i = 0; i < D; ++i) O[static_cast<size_t>(r * D + i)] = X[static_cast<size_t>(r * D + i)] * inv * (w ? W[static_cast<size_t>(i)] : 1.0);
  }
  store(out, O);
}

void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, Tensor& out) {
  int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), cg = C / groups;
  std::vector<double> X = as_double(x), W = w ? as_double(*w) : std::vector<double>(), Bv = b ? as_double(*b) : std::vector<double>();
  std::vector<double> O(X.size());
  for (int64_t n = 0; n < B; ++n) {
    for (int g = 0; g < groups; ++g) {
      size_t base = static_cast<size_t>((n * C + g * cg) * HW), cnt = static_cast<size_t>(cg * HW);
      double mean = 0, var = 0;
      for (size_t i = 0; i < cnt; ++i) mean += X[base + i];
      mean /= static_cast<double>(cnt);
      for (size_t i = 0; i < cnt; ++i) var += std::pow(X[base + i] - mean, 2);
      var /= static_cast<double>(cnt);
      for (size_t i = 0; i < cnt; ++i) {
        size_t c = static_cast<size_t>(g * cg) + i / static_cast<size_t>(HW);
        O[base + i] = (X[base + i] - mean) / std::sqrt(var + eps) * (w ? W[c] : 1.0) + (b ? Bv[c] : 0.0);
      }
    }
  }
  store(out, O);
}

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) {
  int64_t B = x.size(0), H = x.size(1), L = x.size(2), D = x.size(3);
  std::vector<double> X = as_double(x), Cs = as_double(cos), Sn = as_double(sin);
  std::vector<double> O(X.size());
  for (int64_t b = 0; b < B; ++b) {
    int64_t cb = cos.size(0) == 1 ? 0 : b;
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t i = 0; i < D / 2; ++i) {
          size_t xi = static_cast<size_t>(((b * H + h) * L + l) * D + 2 * i);
          size_t ci = static_cast<size_t>((cb * L + l) * (D / 2) + i);
          O[xi] = Cs[ci] * X[xi] - Sn[ci] * X[xi + 1];
          O[xi + 1] = Sn[ci] * X[xi] + Cs[ci] * X[xi + 1];
        }
      }
    }
  }
  store(out, O);
}

void unary(Unary op, const Tensor& x, Tensor& out) {
  std::vector<double> X = as_double(x);
  for (double& v : X) v = unary_value(op, v);
  store(out, X);
}

void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) {
  std::vector<double> A = as_double(a), Bv = as_double(b), O(static_cast<size_t>(out.numel()));
  const Shape& s = out.shape();
  size_t nd = s.size();
  for (int64_t i = 0; i < out.numel(); ++i) {
    int64_t rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (size_t d = nd; d-- > 0;) {
      int64_t idx = rem % s[d];
      rem /= s[d];
      size_t da = d + a.shape().size() - nd, db = d + b.shape().size() - nd;   // wraps when absent
      if (d + a.shape().size() >= nd) {
        int64_t ext = a.shape()[da];
        ia += (ext == 1 ? 0 : idx) * sa;
        sa *= ext;
      }
      if (d + b.shape().size() >= nd) {
        int64_t ext = b.shape()[db];
        ib += (ext == 1 ? 0 : idx) * sb;
        sb *= ext;
      }
    }
    double x = A[static_cast<size_t>(ia)], y = Bv[static_cast<size_t>(ib)];
    O[static_cast<size_t>(i)] = op == Binary::add ? x + y : op == Binary::sub ? x - y : op == Binary::mul ? x * y : x / y;
  }
  store(out, O);
}

void softmax(const Tensor& x, Tensor& out) {
  int64_t D = x.size(-1), rows = x.numel() / D;
  std::vector<double> X = as_double(x);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t i = 0; i < D; ++i) mx = std::max(mx, X[static_cast<size_t>(r * D + i)]);
    for (int64_t i = 0; i < D; ++i) sum += (X[static_cast<size_t>(r * D + i)] = std::exp(X[static_cast<size_t>(r * D + i)] - mx));
    for (int64_t i = 0; i < D; ++i) X[static_cast<size_t>(r * D + i)] /= sum;
  }
  store(out, X);
}

void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out) {
  int64_t B = x.size(0), Ci = x.size(1), H = x.size(2), W = x.size(3);
  int64_t Co = w.size(0), KH = w.size(2), KW = w.size(3), OH = out.size(2), OW = out.size(3);
  std::vector<double> X = as_double(x), Wt = as_double(w), Bv = bias ? as_double(*bias) : std::vector<double>();
  std::vector<double> O(static_cast<size_t>(out.numel()));
  for (int64_t n = 0; n < B; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          double s = bias ? Bv[static_cast<size_t>(co)] : 0.0;
          for (int64_t ci = 0; ci < Ci; ++ci)
            for (int64_t ky = 0; ky < KH; ++ky)
              for (int64_t kx = 0; kx < KW; ++kx) {
                int64_t iy = oy * p.stride + ky - p.pad_top, ix = ox * p.stride + kx - p.pad_left;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                s += X[static_cast<size_t>(((n * Ci + ci) * H + iy) * W + ix)] *
                     Wt[static_cast<size_t>(((co * Ci + ci) * KH + ky) * KW + kx)];
              }
          O[static_cast<size_t>(((n * Co + co) * OH + oy) * OW + ox)] = s;
        }
  store(out, O);
}

void upsample_nearest2x(const Tensor& x, Tensor& out) {
  int64_t BC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> X = as_double(x), O(static_cast<size_t>(out.numel()));
  for (int64_t c = 0; c < BC; ++c)
    for (int64_t y = 0; y < 2 * H; ++y)
      for (int64_t xx = 0; xx < 2 * W; ++xx) O[static_cast<size_t>((c * 2 * H + y) * 2 * W + xx)] = X[static_cast<size_t>((c * H + y / 2) * W + xx / 2)];
  store(out, O);
}

void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) {
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= out.size(d);
  for (int d = dim + 1; d < out.dim(); ++d) inner *= out.size(d);
  std::vector<double> O(static_cast<size_t>(out.numel()));
  int64_t offset = 0;
  for (const Tensor& t : xs) {
    std::vector<double> X = as_double(t);
    int64_t len = t.size(dim);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < len * inner; ++i)
        O[static_cast<size_t>((o * out.size(dim) + offset) * inner + i)] = X[static_cast<size_t>(o * len * inner + i)];
    offset += len;
  }
  store(out, O);
}

}  // namespace fluxpipe::cpu::ref
