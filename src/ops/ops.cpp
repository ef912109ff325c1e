// Validation at the op boundary, then dispatch. Kernels trust what passes here.
#include "ops/ops.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace fluxpipe {

Tensor Ctx::empty(const Shape& shape, DType dtype) const {
  if (backend->device() == Device::CPU) return arena ? arena->empty(shape, dtype) : Tensor::empty(shape, dtype);
  return Tensor::view_of(backend->allocate(bytes_for(dtype, numel(shape))), 0, shape, dtype);
}

namespace ops {
namespace {

[[noreturn]] void fail(const char* op, const std::string& why) { throw UserError(std::string("[") + op + "] " + why); }

const char* device_name(Device d) { return d == Device::CPU ? "the host" : "the GPU"; }

// Every input on the context's device: a model that forgot to upload one fails here, by name.
void need_here(const Ctx& c, const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) fail(op, std::string(what) + " is undefined");
  if (t.device() != c.backend->device()) {
    fail(op, std::string(what) + " " + t.describe() + " is on " + device_name(t.device()) + " but this context computes on " +
                 device_name(c.backend->device()) + " (" + c.backend->name() + ")");
  }
}

void need_float(const Ctx& c, const char* op, const char* what, const Tensor& t) {
  need_here(c, op, what, t);
  if (t.dtype() != DType::F32) fail(op, std::string(what) + " " + t.describe() + " must be F32");
}

void need_contiguous(const char* op, const char* what, const Tensor& t) {
  if (!t.is_contiguous()) fail(op, std::string(what) + " " + t.describe() + " must be contiguous");
}

void need_layout(const Ctx& c, const char* op, Layout layout) {
  if (layout == Layout::nhwc && !c.backend->has_nhwc()) {
    fail(op, "channels-last (nhwc) tensors, but the " + c.backend->name() + " backend computes image ops in nchw only");
  }
}

void need_vector(const Ctx& c, const char* op, const char* what, const Tensor* t, int64_t n) {
  if (!t) return;
  need_here(c, op, what, *t);
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
  need_float(c, name, "a", a);
  need_float(c, name, "b", b);
  need_contiguous(name, "a", a);
  need_contiguous(name, "b", b);
  Tensor out = c.empty(broadcast_shape(name, a, b), DType::F32);
  c.backend->binary(op, a, b, out);
  return out;
}

Tensor unary(Ctx& c, Unary op, const char* name, const Tensor& x) {
  need_float(c, name, "x", x);
  need_contiguous(name, "x", x);
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->unary(op, x, out);
  return out;
}

}  // namespace

Tensor linear(Ctx& c, const Tensor& x, const Tensor& w, const Tensor* bias) {
  need_here(c, "linear", "x", x);
  need_here(c, "linear", "w", w);
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16) fail("linear", "x " + x.describe() + " must be F32 or BF16");
  if (w.dim() != 2 || !info(w.dtype()).floating) fail("linear", "w " + w.describe() + " must be a 2-D float or block-quantized matrix");
  if (x.dim() < 1 || x.size(-1) != w.size(1)) {
    fail("linear", "x " + x.describe() + " and w " + w.describe() + ": x's last dimension must equal w's second");
  }
  need_contiguous("linear", "x", x);
  need_contiguous("linear", "w", w);
  need_vector(c, "linear", "bias", bias, w.size(0));
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
    need_float(c, "attention", n, *t);
    need_contiguous("attention", n, *t);
    if (t->dim() != 4) fail("attention", std::string(n) + " " + t->describe() + " must be [B, H, L, D]");
  }
  if (k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3)) {
    fail("attention", "q " + q.describe() + ", k " + k.describe() + ", v " + v.describe() + " do not agree");
  }
  if (bias) {
    need_float(c, "attention", "bias", *bias);
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
  need_float(c, "layer_norm", "x", x);
  need_contiguous("layer_norm", "x", x);
  need_vector(c, "layer_norm", "weight", w, x.size(-1));
  need_vector(c, "layer_norm", "bias", b, x.size(-1));
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->layer_norm(x, w, b, eps, out);
  return out;
}

Tensor rms_norm(Ctx& c, const Tensor& x, const Tensor* w, float eps) {
  need_float(c, "rms_norm", "x", x);
  need_contiguous("rms_norm", "x", x);
  need_vector(c, "rms_norm", "weight", w, x.size(-1));
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->rms_norm(x, w, eps, out);
  return out;
}

namespace {
// x [B, L, D] and a per-batch vector v [B, 1, D] for the fused modulation ops.
void need_rows_and_batch_vector(const Ctx& c, const char* op, const Tensor& x, const char* vname, const Tensor& v) {
  need_float(c, op, "x", x);
  need_contiguous(op, "x", x);
  need_float(c, op, vname, v);
  need_contiguous(op, vname, v);
  if (x.dim() != 3) fail(op, "x " + x.describe() + " must be [B, L, D]");
  if (v.dim() != 3 || v.size(0) != x.size(0) || v.size(1) != 1 || v.size(2) != x.size(2)) {
    fail(op, std::string(vname) + " " + v.describe() + " must be [B, 1, D] for x " + x.describe());
  }
}
}  // namespace

Tensor layer_norm_modulate(Ctx& c, const Tensor& x, const Tensor& shift, const Tensor& scale, float eps) {
  need_rows_and_batch_vector(c, "layer_norm_modulate", x, "shift", shift);
  need_rows_and_batch_vector(c, "layer_norm_modulate", x, "scale", scale);
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->layer_norm_modulate(x, shift, scale, eps, out);
  return out;
}

Tensor add_gated(Ctx& c, const Tensor& x, const Tensor& gate, const Tensor& y) {
  need_rows_and_batch_vector(c, "add_gated", x, "gate", gate);
  need_float(c, "add_gated", "y", y);
  need_contiguous("add_gated", "y", y);
  if (y.shape() != x.shape()) fail("add_gated", "y " + y.describe() + " must have x's shape " + x.describe());
  Tensor out = c.empty(x.shape(), DType::F32);
  c.backend->add_gated(x, gate, y, out);
  return out;
}

Tensor group_norm(Ctx& c, const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Layout layout) {
  need_float(c, "group_norm", "x", x);
  need_contiguous("group_norm", "x", x);
  need_layout(c, "group_norm", layout);
  const bool nhwc = layout == Layout::nhwc;
  if (x.dim() != 4) fail("group_norm", "x " + x.describe() + (nhwc ? " must be [B, H, W, C]" : " must be [B, C, H, W]"));
  const int64_t C = x.size(nhwc ? 3 : 1);
  if (groups <= 0 || C % groups != 0) {
    fail("group_norm", "channels " + std::to_string(C) + " of " + x.describe() + " do not split into " +
                           std::to_string(groups) + " groups");
  }
  need_vector(c, "group_norm", "weight", w, C);
  need_vector(c, "group_norm", "bias", b, C);
  Tensor out = c.empty(x.shape(), DType::F32);
  if (nhwc) {
    c.backend->group_norm_nhwc(x, groups, w, b, eps, silu, out);
  } else {
    c.backend->group_norm(x, groups, w, b, eps, silu, out);
  }
  return out;
}

Tensor rope(Ctx& c, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  need_float(c, "rope", "x", x);
  need_float(c, "rope", "cos", cos);
  need_float(c, "rope", "sin", sin);
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

std::array<Tensor, 3> qkv_heads(Ctx& c, const std::vector<QkvPart>& parts, int64_t heads, const Tensor& cos,
                                const Tensor& sin, float eps) {
  if (parts.empty()) fail("qkv_heads", "no parts");
  const Tensor& first = parts[0].qkv;
  if (heads <= 0 || first.dim() != 3 || first.size(2) % (6 * heads) != 0) {
    fail("qkv_heads", "qkv " + first.describe() + " must be [B, L, 3 * heads * hd] with even hd (heads " + std::to_string(heads) + ")");
  }
  const int64_t B = first.size(0), width = first.size(2), hd = width / (3 * heads);
  int64_t L = 0;
  for (const QkvPart& p : parts) {
    need_float(c, "qkv_heads", "qkv", p.qkv);
    need_contiguous("qkv_heads", "qkv", p.qkv);
    if (p.qkv.dim() != 3 || p.qkv.size(0) != B || p.qkv.size(2) != width) {
      fail("qkv_heads", "qkv " + p.qkv.describe() + " does not match the first part " + first.describe());
    }
    need_vector(c, "qkv_heads", "q_scale", &p.q_scale, hd);
    need_vector(c, "qkv_heads", "k_scale", &p.k_scale, hd);
    L += p.qkv.size(1);
  }
  need_float(c, "qkv_heads", "cos", cos);
  need_float(c, "qkv_heads", "sin", sin);
  need_contiguous("qkv_heads", "cos", cos);
  need_contiguous("qkv_heads", "sin", sin);
  if (cos.shape() != sin.shape() || cos.dim() != 3 || (cos.size(0) != 1 && cos.size(0) != B) || cos.size(1) != L ||
      cos.size(2) != hd / 2) {
    fail("qkv_heads", "cos " + cos.describe() + " / sin " + sin.describe() + " must be [1|B, " + std::to_string(L) + ", " +
                          std::to_string(hd / 2) + "]");
  }
  Tensor q = c.empty({B, heads, L, hd}, DType::F32), k = c.empty({B, heads, L, hd}, DType::F32), v = c.empty({B, heads, L, hd}, DType::F32);
  c.backend->qkv_heads(parts, cos, sin, eps, q, k, v);
  return {q, k, v};
}

Tensor gelu_tanh(Ctx& c, const Tensor& x) { return unary(c, Unary::gelu_tanh, "gelu_tanh", x); }
Tensor gelu_erf(Ctx& c, const Tensor& x) { return unary(c, Unary::gelu_erf, "gelu_erf", x); }
Tensor silu(Ctx& c, const Tensor& x) { return unary(c, Unary::silu, "silu", x); }
Tensor quick_gelu(Ctx& c, const Tensor& x) { return unary(c, Unary::quick_gelu, "quick_gelu", x); }

Tensor softmax(Ctx& c, const Tensor& x) {
  need_float(c, "softmax", "x", x);
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
  need_float(c, "conv2d", "x", x);
  need_here(c, "conv2d", "w", w);
  need_contiguous("conv2d", "x", x);
  need_contiguous("conv2d", "w", w);
  need_layout(c, "conv2d", p.layout);
  const bool nhwc = p.layout == Layout::nhwc;
  const int ch = nhwc ? 3 : 1, hd = nhwc ? 1 : 2, wd = nhwc ? 2 : 3;
  if (x.dim() != 4 || w.dim() != 4 || w.size(1) != x.size(ch) || is_quantized(w.dtype()) || !info(w.dtype()).floating) {
    fail("conv2d", "x " + x.describe() + (nhwc ? " [B, H, W, Cin]" : " [B, Cin, H, W]") + " and w " + w.describe() +
                       " [Cout, Cin, kh, kw] do not agree");
  }
  need_vector(c, "conv2d", "bias", bias, w.size(0));
  if (p.stride < 1 || p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0) fail("conv2d", "bad stride or padding");
  int64_t oh = (x.size(hd) + p.pad_top + p.pad_bottom - w.size(2)) / p.stride + 1;
  int64_t ow = (x.size(wd) + p.pad_left + p.pad_right - w.size(3)) / p.stride + 1;
  if (oh <= 0 || ow <= 0) fail("conv2d", "kernel " + w.describe() + " is larger than the padded input " + x.describe());
  Tensor out = c.empty(nhwc ? Shape{x.size(0), oh, ow, w.size(0)} : Shape{x.size(0), w.size(0), oh, ow}, DType::F32);
  c.backend->conv2d(x, w, bias, p, out, c.compute);
  return out;
}

Tensor upsample_nearest2x(Ctx& c, const Tensor& x, Layout layout) {
  need_float(c, "upsample_nearest2x", "x", x);
  need_contiguous("upsample_nearest2x", "x", x);
  need_layout(c, "upsample_nearest2x", layout);
  const bool nhwc = layout == Layout::nhwc;
  if (x.dim() != 4) fail("upsample_nearest2x", "x " + x.describe() + (nhwc ? " must be [B, H, W, C]" : " must be [B, C, H, W]"));
  if (nhwc) {
    Tensor out = c.empty({x.size(0), 2 * x.size(1), 2 * x.size(2), x.size(3)}, DType::F32);
    c.backend->upsample_nearest2x_nhwc(x, out);
    return out;
  }
  Tensor out = c.empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32);
  c.backend->upsample_nearest2x(x, out);
  return out;
}

Layout image_layout(const Ctx& c) { return c.backend->has_nhwc() ? Layout::nhwc : Layout::nchw; }

Tensor concat(Ctx& c, const std::vector<Tensor>& xs, int dim) {
  if (xs.empty()) fail("concat", "no inputs");
  int nd = xs[0].dim();
  if (dim < 0) dim += nd;
  if (dim < 0 || dim >= nd) fail("concat", "dim out of range for " + xs[0].describe());
  Shape out_shape = xs[0].shape();
  out_shape[static_cast<size_t>(dim)] = 0;
  for (const Tensor& t : xs) {
    need_float(c, "concat", "input", t);
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
  need_here(c, "to_dtype", "x", x);
  if (!info(dtype).floating || is_quantized(dtype)) {
    fail("to_dtype", "cannot convert " + x.describe() + " to " + name(dtype));
  }
  if (is_quantized(x.dtype()) && !x.is_contiguous()) fail("to_dtype", x.describe() + " must be contiguous");
  Tensor out = c.empty(x.shape(), dtype);
  c.backend->copy(x, out);
  return out;
}

Tensor contiguous(Ctx& c, const Tensor& x) { return x.is_contiguous() ? x : to_dtype(c, x, x.dtype()); }

namespace {
// Host ids (any dtype the tokenizer or a file gives) -> I32 on the context's device, each
// checked to be a whole number in [0, V).
Tensor ids_on_device(Ctx& c, const char* op, const Tensor& ids, int64_t V) {
  if (ids.device() != Device::CPU) fail(op, "ids " + ids.describe() + " must be on the host (they are the job's input)");
  std::vector<float> idv = ids.to_floats();
  Tensor host = Tensor::empty({static_cast<int64_t>(idv.size())}, DType::I32);
  for (size_t i = 0; i < idv.size(); ++i) {
    float f = idv[i];
    if (!(f >= 0 && f < static_cast<float>(V)) || f != std::floor(f)) {
      fail(op, "id " + std::to_string(f) + " at position " + std::to_string(i) + " is outside the vocabulary of " + std::to_string(V));
    }
    host.data<int32_t>()[i] = static_cast<int32_t>(f);
  }
  return to_device(c, host);
}
}  // namespace

Tensor to_device(Ctx& c, const Tensor& t) {
  if (!t.defined()) fail("to_device", "undefined tensor");
  if (t.device() == c.backend->device()) return t;
  Ctx host;   // a strided host view is made contiguous on the host first
  Tensor src = t.is_contiguous() ? t : to_dtype(host, t, t.dtype());
  Tensor out = c.empty(src.shape(), src.dtype());
  c.backend->transfer(src, out);
  return out;
}

Tensor to_host(Ctx& c, const Tensor& t) {
  if (!t.defined()) fail("to_host", "undefined tensor");
  if (t.device() == Device::CPU) return t;
  Tensor src = t.is_contiguous() ? t : to_dtype(c, t, t.dtype());
  Tensor out = Tensor::empty(src.shape(), src.dtype());
  c.backend->transfer(src, out);
  return out;
}

Tensor constant(Ctx& c, const Shape& shape, const std::vector<float>& values) {
  return to_device(c, Tensor::from_floats(shape, values));
}

Tensor zeros(Ctx& c, const Shape& shape, DType dtype) {
  if (c.backend->device() == Device::CPU && !c.arena) return Tensor::zeros(shape, dtype);
  Tensor out = c.empty(shape, dtype);
  c.backend->zero(out);
  return out;
}

Tensor embedding(Ctx& c, const Tensor& table, const Tensor& ids) {
  need_here(c, "embedding", "table", table);
  if (table.dim() != 2 || !info(table.dtype()).floating || !table.is_contiguous()) {
    fail("embedding", "table " + table.describe() + " must be a contiguous [V, H] float or block matrix");
  }
  if (ids.dim() != 2) fail("embedding", "ids " + ids.describe() + " must be [B, T]");
  Tensor dev_ids = ids_on_device(c, "embedding", ids, table.size(0));
  Tensor out = c.empty({ids.size(0), ids.size(1), table.size(1)}, DType::F32);
  if (out.numel()) c.backend->embedding(table, dev_ids, out);
  return out;
}

Tensor arange_ids(Ctx& c, int64_t B, int64_t T) {
  Tensor out = Tensor::empty({B, T}, DType::F32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) out.data<float>()[b * T + t] = static_cast<float>(t);
  return out;
}

Tensor gather_rows_at_argmax(Ctx& c, const Tensor& x, const Tensor& ids) {
  need_float(c, "gather_rows_at_argmax", "x", x);
  need_contiguous("gather_rows_at_argmax", "x", x);
  if (x.dim() != 3 || ids.dim() != 2 || ids.size(0) != x.size(0) || ids.size(1) != x.size(1)) {
    fail("gather_rows_at_argmax", "x " + x.describe() + " and ids " + ids.describe() + " do not agree");
  }
  if (ids.device() != Device::CPU) fail("gather_rows_at_argmax", "ids " + ids.describe() + " must be on the host");
  std::vector<float> idv = ids.to_floats();
  int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  Tensor out = c.empty({B, H}, DType::F32);
  for (int64_t b = 0; b < B; ++b) {
    int64_t best = 0;
    for (int64_t t = 1; t < T; ++t) {
      if (idv[static_cast<size_t>(b * T + t)] > idv[static_cast<size_t>(b * T + best)]) best = t;
    }
    // One row, copied on the device (a [1, 1, H] view into x).
    Tensor row = out.slice(0, b, 1).reshape({1, 1, H});
    c.backend->copy(x.slice(0, b, 1).slice(1, best, 1), row);
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
  need_float(c, "t5_position_bias", "table", table);
  need_contiguous("t5_position_bias", "table", table);
  if (table.dim() != 2) fail("t5_position_bias", "table " + table.describe() + " must be [buckets, heads]");
  int64_t buckets = table.size(0), heads = table.size(1);
  int64_t B = mask ? mask->size(0) : 1;
  if (mask && (mask->dim() != 2 || mask->size(1) != Lk)) fail("t5_position_bias", "mask " + mask->describe() + " must be [B, Lk]");
  // Which bucket each (query, key) pair falls in depends on the positions alone: integer
  // results of the reference's float32 logs, taken on the host where they match it exactly.
  Tensor bk = Tensor::empty({Lq, Lk}, DType::I32);
  for (int64_t i = 0; i < Lq; ++i)
    for (int64_t j = 0; j < Lk; ++j) bk.data<int32_t>()[i * Lk + j] = t5_bucket(i, j, static_cast<int>(buckets), max_distance);
  Tensor dev_buckets = to_device(c, bk);
  Tensor dev_mask;
  if (mask) dev_mask = to_device(c, mask->dtype() == DType::F32 ? *mask : Tensor::from_floats(mask->shape(), mask->to_floats()));
  Tensor out = c.empty({B, heads, Lq, Lk}, DType::F32);
  c.backend->position_bias(table, dev_buckets, mask ? &dev_mask : nullptr, out);
  return out;
}

Tensor timestep_embedding(Ctx& c, const Tensor& t, int dim, float time_factor, float max_period) {
  need_float(c, "timestep_embedding", "t", t);
  need_contiguous("timestep_embedding", "t", t);
  if (t.dim() != 1 || dim % 2 != 0) fail("timestep_embedding", "t " + t.describe() + " must be [B]; dim even");
  Tensor out = c.empty({t.size(0), dim}, DType::F32);
  c.backend->timestep_embedding(t, time_factor, max_period, out);
  return out;
}

std::pair<Tensor, Tensor> rope_tables(Ctx& c, const Tensor& ids, const std::vector<int>& axes_dim, double theta) {
  need_float(c, "rope_tables", "ids", ids);
  need_contiguous("rope_tables", "ids", ids);
  if (ids.dim() != 3 || ids.size(2) != static_cast<int64_t>(axes_dim.size())) {
    fail("rope_tables", "ids " + ids.describe() + " must be [B, L, " + std::to_string(axes_dim.size()) + "]");
  }
  int pairs = 0;
  for (int d : axes_dim) {
    if (d <= 0 || d % 2 != 0) fail("rope_tables", "axis width " + std::to_string(d) + " is not a positive even number");
    pairs += d / 2;
  }
  Tensor cs = c.empty({ids.size(0), ids.size(1), pairs}, DType::F32), sn = c.empty({ids.size(0), ids.size(1), pairs}, DType::F32);
  c.backend->rope_tables(ids, axes_dim, theta, cs, sn);
  return {cs, sn};
}

Tensor to_u8(Ctx& c, const Tensor& image) {
  need_float(c, "to_u8", "image", image);
  need_contiguous("to_u8", "image", image);
  if (image.dim() != 4 || image.size(1) != 3) fail("to_u8", "image " + image.describe() + " must be [B, 3, H, W]");
  Tensor out = c.empty({image.size(0), image.size(2), image.size(3), 3}, DType::U8);
  c.backend->to_u8(image, out);
  return out;
}

void blend_tile(Ctx& c, const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0,
                Tensor& acc, Tensor* wsum) {
  for (auto [n, t] : {std::pair{"tile", &tile}, {"wy", &wy}, {"wx", &wx}, {"acc", &acc}}) {
    need_float(c, "blend_tile", n, *t);
    need_contiguous("blend_tile", n, *t);
  }
  if (tile.dim() != 4 || tile.size(0) != 1 || acc.dim() != 4 || acc.size(1) != tile.size(1) || wy.numel() != tile.size(2) ||
      wx.numel() != tile.size(3) || b < 0 || b >= acc.size(0) || y0 < 0 || x0 < 0 || y0 + tile.size(2) > acc.size(2) ||
      x0 + tile.size(3) > acc.size(3)) {
    fail("blend_tile", "tile " + tile.describe() + " at (" + std::to_string(b) + ", " + std::to_string(y0) + ", " + std::to_string(x0) +
                           ") does not fit acc " + acc.describe() + " with weights " + wy.describe() + " / " + wx.describe());
  }
  if (wsum) {
    need_float(c, "blend_tile", "wsum", *wsum);
    if (wsum->dim() != 2 || wsum->size(0) != acc.size(2) || wsum->size(1) != acc.size(3)) {
      fail("blend_tile", "wsum " + wsum->describe() + " must be [H, W] of acc " + acc.describe());
    }
  }
  c.backend->blend_tile(tile, wy, wx, b, y0, x0, acc, wsum);
}

}  // namespace ops
}  // namespace fluxpipe
