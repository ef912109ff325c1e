// Validation at the op boundary, then dispatch. Kernels trust what passes here.
#include "ops/ops.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace fluxpipe {

Tensor Ctx::empty(const Shape& shape, DType dtype) const {
  return arena ? arena->empty(shape, dtype) : Tensor::empty(shape, dtype);
}

namespace ops {
namespace {

[[noreturn]] void fail(const char* op, const std::string& why) { throw UserError(std::string("[") + op + "] " + why); }

void need_float(const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) fail(op, std::string(what) + " is undefined");
  if (t.dtype() != DType::F32) fail(op, std::string(what) + " " + t.describe() + " must be F32");
}

void need_contiguous(const char* op, const char* what, const Tensor& t) {
  if (!t.is_contiguous()) fail(op, std::string(what) + " " + t.describe() + " must be contiguous");
}

void need_vector(const char* op, const char* what, const Tensor* t, int64_t n) {
  if (!t) return;
  if (t->dim() != 1 || t->size(0) != n || !info(t->dtype()).floating || is_quantized(t->dtype())) {
    fail(op, std::string(what) + " " + t->describe() + " must be a dense float vector of " + std::to_string(n));
  }
  need_contiguous(op, what, *t);
}

Shape broadcast_shape(const char* op, const Tensor& a, const Tensor& b) {
  size_t n = std::max(a.shape().size(), b.shape().size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.shape().size() ? 1 : a.shape()[i - (n - a.shape().size())];
    int64_t db = i < n - b.shape().size() ? 1 : b.shape()[i - (n - b.shape().size())];
    if (da != db && da != 1 && db != 1) fail(op, "shapes " + a.describe() + " and " + b.describe() + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor binary(Ctx& c, Binary op, const char* name, const Tensor& a, const Tensor& b) {
  need_float(name, "a", a);
  need_float(name, "b", b);
  need_contiguous(name, "a", a);
  need_contiguous(name, "b", b);
  Tensor out = c.empty(broadcast_shape(name, a, b), DType::F32);
  c.backend->binary(op, a, b, out);
  return out;
}

Tensor unary(Ctx& c, Unary op, const char* name, const Tensor& x) {
  need_float(name, "x", x);
  need_contiguous(name, "x", x);
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->unary(op, x, out);
  return out;
}

}  // namespace

Tensor linear(Ctx& c, const Tensor& x, const Tensor& w, const Tensor* bias) {
  if (!x.defined() || !w.defined()) fail("linear", "undefined input");
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16) fail("linear", "x " + x.describe() + " must be F32 or BF16");
  if (w.dim() != 2 || !info(w.dtype()).floating) fail("linear", "w " + w.describe() + " must be a 2-D float or block-quantized matrix");
  if (x.dim() < 1 || x.size(-1) != w.size(1)) {
    fail("linear", "x " + x.describe() + " and w " + w.describe() + ": x's last dimension must equal w's second");
  }
  need_contiguous("linear", "x", x);
  need_contiguous("linear", "w", w);
  need_vector("linear", "bias", bias, w.size(0));
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor out = c.empty(out_shape, DType::F32);
  Tensor x2 = x.reshape({x.numel() / std::max<int64_t>(1, x.size(-1)), x.size(-1)});
  Tensor o2 = out.reshape({x2.size(0), w.size(0)});
  if (x2.size(0) > 0) c.backend->linear(x2, w, bias, o2, c.compute);
  return out;
}

Tensor attention(Ctx& c, const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias,
                 bool causal) {
  for (auto [n, t] : {std::pair{"q", &q}, {"k", &k}, {"v", &v}}) {
    need_float("attention", n, *t);
    need_contiguous("attention", n, *t);
    if (t->dim() != 4) fail("attention", std::string(n) + " " + t->describe() + " must be [B, H, L, D]");
  }
  if (k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3)) {
    fail("attention", "q " + q.describe() + ", k " + k.describe() + ", v " + v.describe() + " do not agree");
  }
  if (bias) {
    need_float("attention", "bias", *bias);
    need_contiguous("attention", "bias", *bias);
    const Tensor& b = *bias;
    if (b.dim() != 4 || (b.size(0) != 1 && b.size(0) != q.size(0)) || (b.size(1) != 1 && b.size(1) != q.size(1)) ||
        b.size(2) != q.size(2) || b.size(3) != k.size(2)) {
      fail("attention", "bias " + b.describe() + " must be [1|B, 1|H, Lq, Lk] for q " + q.describe() + " and k " + k.describe());
    }
  }
  Tensor out = c.empty(q.shape(), DType::F32);
  c.backend->attention(q, k, v, scale, bias, causal, out, c.compute);
  return out;
}

Tensor layer_norm(Ctx& c, const Tensor& x, const Tensor* w, const Tensor* b, float eps) {
  need_float("layer_norm", "x", x);
  need_contiguous("layer_norm", "x", x);
  need_vector("layer_norm", "weight", w, x.size(-1));
  need_vector("layer_norm", "bias", b, x.size(-1));
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->layer_norm(x, w, b, eps, out);
  return out;
}

Tensor rms_norm(Ctx& c, const Tensor& x, const Tensor* w, float eps) {
  need_float("rms_norm", "x", x);
  need_contiguous("rms_norm", "x", x);
  need_vector("rms_norm", "weight", w, x.size(-1));
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->rms_norm(x, w, eps, out);
  return out;
}

namespace {
// x [B, L, D] and a per-batch vector v [B, 1, D] for the fused modulation ops.
void need_rows_and_batch_vector(const char* op, const Tensor& x, const char* vname, const Tensor& v) {
  need_float(op, "x", x);
  need_contiguous(op, "x", x);
  need_float(op, vname, v);
  need_contiguous(op, vname, v);
  if (x.dim() != 3) fail(op, "x " + x.describe() + " must be [B, L, D]");
  if (v.dim() != 3 || v.size(0) != x.size(0) || v.size(1) != 1 || v.size(2) != x.size(2)) {
    fail(op, std::string(vname) + " " + v.describe() + " must be [B, 1, D] for x " + x.describe());
  }
}
}  // namespace

Tensor layer_norm_modulate(Ctx& c, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps) {
  need_rows_and_batch_vector("layer_norm_modulate", x, "shift", shift);
  need_rows_and_batch_vector("layer_norm_modulate", x, "scale", scale);
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->layer_norm_modulate(x, shift, scale, eps, out);
  return out;
}

Tensor add_gated(Ctx& c, const Tensor& x, const Tensor& gate, const Tensor& y) {
  need_rows_and_batch_vector("add_gated", x, "gate", gate);
  need_float("add_gated", "y", y);
  need_contiguous("add_gated", "y", y);
  if (y.shape() != x.shape()) fail("add_gated", "y " + y.describe() + " must have x's shape " + x.describe());
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->add_gated(x, gate, y, out);
  return out;
}

Tensor group_norm(Ctx& c, const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu) {
  need_float("group_norm", "x", x);
  need_contiguous("group_norm", "x", x);
  if (x.dim() != 4) fail("group_norm", "x " + x.describe() + " must be [B, C, H, W]");
  if (groups <= 0 || x.size(1) % groups != 0) {
    fail("group_norm", "channels " + std::to_string(x.size(1)) + " of " + x.describe() + " do not split into " +
                           std::to_string(groups) + " groups");
  }
  need_vector("group_norm", "weight", w, x.size(1));
  need_vector("group_norm", "bias", b, x.size(1));
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->group_norm(x, groups, w, b, eps, silu, out);
  return out;
}

Tensor rope(Ctx& c, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  need_float("rope", "x", x);
  need_float("rope", "cos", cos);
  need_float("rope", "sin", sin);
  for (const Tensor* t : {&x, &cos, &sin}) need_contiguous("rope", "input", *t);
  if (x.dim() != 4 || x.size(3) % 2 != 0) fail("rope", "x " + x.describe() + " must be [B, H, L, D] with even D");
  if (cos.shape() != sin.shape() || cos.dim() != 3 || (cos.size(0) != 1 && cos.size(0) != x.size(0)) ||
      cos.size(1) != x.size(2) || cos.size(2) != x.size(3) / 2) {
    fail("rope", "cos " + cos.describe() + " / sin " + sin.describe() + " must be [1|B, L, D/2] for x " + x.describe());
  }
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->rope(x, cos, sin, out);
  return out;
}

Tensor gelu_tanh(Ctx& c, const Tensor& x) { return unary(c, Unary::gelu_tanh, "gelu_tanh", x); }
Tensor gelu_erf(Ctx& c, const Tensor& x) { return unary(c, Unary::gelu_erf, "gelu_erf", x); }
Tensor silu(Ctx& c, const Tensor& x) { return unary(c, Unary::silu, "silu", x); }
Tensor quick_gelu(Ctx& c, const Tensor& x) { return unary(c, Unary::quick_gelu, "quick_gelu", x); }

Tensor softmax(Ctx& c, const Tensor& x) {
  need_float("softmax", "x", x);
  need_contiguous("softmax", "x", x);
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->softmax(x, out);
  return out;
}

Tensor add(Ctx& c, const Tensor& a, const Tensor& b) { return binary(c, Binary::add, "add", a, b); }
Tensor sub(Ctx& c, const Tensor& a, const Tensor& b) { return binary(c, Binary::sub, "sub", a, b); }
Tensor mul(Ctx& c, const Tensor& a, const Tensor& b) { return binary(c, Binary::mul, "mul", a, b); }
Tensor div(Ctx& c, const Tensor& a, const Tensor& b) { return binary(c, Binary::div, "div", a, b); }

Tensor conv2d(Ctx& c, const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p) {
  need_float("conv2d", "x", x);
  need_contiguous("conv2d", "x", x);
  need_contiguous("conv2d", "w", w);
  if (x.dim() != 4 || w.dim() != 4 || w.size(1) != x.size(1) || is_quantized(w.dtype()) || !info(w.dtype()).floating) {
    fail("conv2d", "x " + x.describe() + " [B, Cin, H, W] and w " + w.describe() + " [Cout, Cin, kh, kw] do not agree");
  }
  need_vector("conv2d", "bias", bias, w.size(0));
  if (p.stride < 1 || p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0) fail("conv2d", "bad stride or padding");
  int64_t oh = (x.size(2) + p.pad_top + p.pad_bottom - w.size(2)) / p.stride + 1;
  int64_t ow = (x.size(3) + p.pad_left + p.pad_right - w.size(3)) / p.stride + 1;
  if (oh <= 0 || ow <= 0) fail("conv2d", "kernel " + w.describe() + " is larger than the padded input " + x.describe());
  Tensor out = c.empty({x.size(0), w.size(0), oh, ow}, DType::F32);
  c.backend->conv2d(x, w, bias, p, out, c.compute);
  return out;
}

Tensor upsample_nearest2x(Ctx& c, const Tensor& x) {
  need_float("upsample_nearest2x", "x", x);
  need_contiguous("upsample_nearest2x", "x", x);
  if (x.dim() != 4) fail("upsample_nearest2x", "x " + x.describe() + " must be [B, C, H, W]");
  Tensor out = c.empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32);
  c.backend->upsample_nearest2x(x, out);
  return out;
}

Tensor concat(Ctx& c, const std::vector<Tensor>& xs, int dim) {
  if (xs.empty()) fail("concat", "no inputs");
  int nd = xs[0].dim();
  if (dim < 0) dim += nd;
  if (dim < 0 || dim >= nd) fail("concat", "dim out of range for " + xs[0].describe());
  Shape out_shape = xs[0].shape();
  out_shape[static_cast<size_t>(dim)] = 0;
  for (const Tensor& t : xs) {
    need_float("concat", "input", t);
    need_contiguous("concat", "input", t);
    bool ok = t.dim() == nd;
    for (int d = 0; ok && d < nd; ++d) ok = d == dim || t.size(d) == xs[0].size(d);
    if (!ok) fail("concat", "inputs " + xs[0].describe() + " and " + t.describe() + " differ outside dim " + std::to_string(dim));
    out_shape[static_cast<size_t>(dim)] += t.size(dim);
  }
  Tensor out = c.empty(out_shape, DType::F32);
  c.backend->concat(xs, dim, out);
  return out;
}

Tensor to_dtype(Ctx& c, const Tensor& x, DType dtype) {
  if (!info(dtype).floating || is_quantized(dtype)) {
    fail("to_dtype", "cannot convert " + x.describe() + " to " + name(dtype));
  }
  if (is_quantized(x.dtype()) && !x.is_contiguous()) fail("to_dtype", x.describe() + " must be contiguous");
  Tensor out = c.empty(x.shape(), dtype);
  c.backend->copy(x, out);
  return out;
}

Tensor contiguous(Ctx& c, const Tensor& x) { return x.is_contiguous() ? x : to_dtype(c, x, x.dtype()); }

Tensor embedding(Ctx& c, const Tensor& table, const Tensor& ids) {
  if (table.dim() != 2 || !info(table.dtype()).floating || !table.is_contiguous()) {
    fail("embedding", "table " + table.describe() + " must be a contiguous [V, H] float or block matrix");
  }
  if (ids.dim() != 2) fail("embedding", "ids " + ids.describe() + " must be [B, T]");
  std::vector<float> idv = ids.to_floats();
  int64_t V = table.size(0), H = table.size(1);
  Tensor out = c.empty({ids.size(0), ids.size(1), H}, DType::F32);
  size_t row_bytes = bytes_for(table.dtype(), H);
  for (size_t i = 0; i < idv.size(); ++i) {
    float f = idv[i];
    if (!(f >= 0 && f < static_cast<float>(V)) || f != std::floor(f)) {
      fail("embedding", "id " + std::to_string(f) + " at position " + std::to_string(i) + " is outside the vocabulary of " + std::to_string(V));
    }
    to_f32(table.dtype(), table.data<uint8_t>() + static_cast<size_t>(f) * row_bytes, out.data<float>() + i * static_cast<size_t>(H), H);
  }
  return out;
}

Tensor arange_ids(Ctx& c, int64_t B, int64_t T) {
  Tensor out = c.empty({B, T}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) out.data<float>()[b * T + t] = static_cast<float>(t);
  return out;
}

Tensor gather_rows_at_argmax(Ctx& c, const Tensor& x, const Tensor& ids) {
  need_float("gather_rows_at_argmax", "x", x);
  need_contiguous("gather_rows_at_argmax", "x", x);
  if (x.dim() != 3 || ids.dim() != 2 || ids.size(0) != x.size(0) || ids.size(1) != x.size(1)) {
    fail("gather_rows_at_argmax", "x " + x.describe() + " and ids " + ids.describe() + " do not agree");
  }
  std::vector<float> idv = ids.to_floats();
  int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  Tensor out = c.empty({B, H}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    int64_t best = 0;
    for (int64_t t = 1; t < T; ++t) {
      if (idv[static_cast<size_t>(b * T + t)] > idv[static_cast<size_t>(b * T + best)]) best = t;
    }
    std::memcpy(out.data<float>() + b * H, x.data<float>() + (b * T + best) * H, static_cast<size_t>(H) * 4);
  }
  return out;
}

int t5_bucket(int64_t i, int64_t j, int num_buckets, int max_distance) {
  int64_t r = j - i;
  int half = num_buckets / 2;
  int bucket = r > 0 ? half : 0;
  int64_t n = r < 0 ? -r : r;
  int max_exact = half / 2;
  if (n < max_exact) return bucket + static_cast<int>(n);
  // float32 as HF computes it: log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact)
  float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
  float denom = static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact));
  float large = std::log(ratio) / denom * static_cast<float>(half - max_exact);
  int v = max_exact + static_cast<int>(large);
  return bucket + std::min(v, half - 1);
}

Tensor t5_position_bias(Ctx& c, const Tensor& table, int64_t Lq, int64_t Lk, int max_distance, const Tensor* mask) {
  need_float("t5_position_bias", "table", table);
  if (table.dim() != 2) fail("t5_position_bias", "table " + table.describe() + " must be [buckets, heads]");
  int64_t buckets = table.size(0), heads = table.size(1);
  int64_t B = mask ? mask->size(0) : 1;
  if (mask && (mask->dim() != 2 || mask->size(1) != Lk)) fail("t5_position_bias", "mask " + mask->describe() + " must be [B, Lk]");
  std::vector<float> tv = table.to_floats(), mv = mask ? mask->to_floats() : std::vector<float>();
  Tensor out = c.empty({B, heads, Lq, Lk}, DType::F32);
  float* o = out.data<float>();
  const float lowest = std::numeric_limits<float>::lowest();
  for (int64_t i = 0; i < Lq; ++i) {
    for (int64_t j = 0; j < Lk; ++j) {
      int bk = t5_bucket(i, j, static_cast<int>(buckets), max_distance);
      for (int64_t b = 0; b < B; ++b) {
        float add = mask ? (1.0f - mv[static_cast<size_t>(b * Lk + j)]) * lowest : 0.0f;
        for (int64_t h = 0; h < heads; ++h) o[((b * heads + h) * Lq + i) * Lk + j] = tv[static_cast<size_t>(bk * heads + h)] + add;
      }
    }
  }
  return out;
}

// The two table builders below run on the host: they are tiny (B x 256, B x L x D/2) and
// their exact float32 arithmetic matters more than their speed.
Tensor timestep_embedding(Ctx& c, const Tensor& t, int dim, float time_factor, float max_period) {
  if (t.dim() != 1 || dim % 2 != 0) fail("timestep_embedding", "t " + t.describe() + " must be [B]; dim even");
  std::vector<float> tv = t.to_floats();
  int half = dim / 2;
  std::vector<float> freqs(static_cast<size_t>(half));
  const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
  for (int i = 0; i < half; ++i) freqs[static_cast<size_t>(i)] = std::exp(static_cast<float>(i) * neg_log / static_cast<float>(half));
  std::vector<float> out(tv.size() * static_cast<size_t>(dim));
  for (size_t b = 0; b < tv.size(); ++b) {
    float scaled = time_factor * tv[b];
    for (int i = 0; i < half; ++i) {
      float arg = scaled * freqs[static_cast<size_t>(i)];
      out[b * static_cast<size_t>(dim) + static_cast<size_t>(i)] = std::cos(arg);
      out[b * static_cast<size_t>(dim) + static_cast<size_t>(half + i)] = std::sin(arg);
    }
  }
  Tensor r = c.empty({t.size(0), dim}, DType::F32);
  std::memcpy(r.data<float>(), out.data(), out.size() * 4);
  return r;
}

std::pair<Tensor, Tensor> rope_tables(Ctx& c, const Tensor& ids, const std::vector<int>& axes_dim, double theta) {
  if (ids.dim() != 3 || ids.size(2) != static_cast<int64_t>(axes_dim.size())) {
    fail("rope_tables", "ids " + ids.describe() + " must be [B, L, " + std::to_string(axes_dim.size()) + "]");
  }
  int pairs = 0;
  for (int d : axes_dim) {
    if (d <= 0 || d % 2 != 0) fail("rope_tables", "axis width " + std::to_string(d) + " is not a positive even number");
    pairs += d / 2;
  }
  std::vector<float> idv = ids.to_floats();
  int64_t B = ids.size(0), L = ids.size(1), A = ids.size(2);
  Tensor cs = c.empty({B, L, pairs}, DType::F32), sn = c.empty({B, L, pairs}, DType::F32);
  float* co = cs.data<float>();
  float* so = sn.data<float>();
  for (int64_t bl = 0; bl < B * L; ++bl) {
    int j0 = 0;
    for (int64_t a = 0; a < A; ++a) {
      int d = axes_dim[static_cast<size_t>(a)];
      double pos = idv[static_cast<size_t>(bl * A + a)];
      for (int j = 0; j < d / 2; ++j) {
        double omega = 1.0 / std::pow(theta, static_cast<double>(2 * j) / d);
        double angle = pos * omega;
        co[bl * pairs + j0 + j] = static_cast<float>(std::cos(angle));
        so[bl * pairs + j0 + j] = static_cast<float>(std::sin(angle));
      }
      j0 += d / 2;
    }
  }
  return {cs, sn};
}

}  // namespace ops
}  // namespace fluxpipe
