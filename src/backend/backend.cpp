#include "backend/backend.h"

#include "core/error.h"

namespace fluxpipe {

// Reached only through a bug: the ops layer gives nhwc tensors to backends whose has_nhwc() is true.
void Backend::group_norm_nhwc(const Tensor&, int, const Tensor*, const Tensor*, float, bool, Tensor&) {
  throw InternalError("[" + name() + "] group_norm_nhwc: this backend has no channels-last image ops");
}

void Backend::upsample_nearest2x_nhwc(const Tensor&, Tensor&) {
  throw InternalError("[" + name() + "] upsample_nearest2x_nhwc: this backend has no channels-last image ops");
}

void Backend::qkv_heads(const std::vector<QkvPart>& parts, const Tensor& cos, const Tensor& sin, float eps, Tensor& q,
                        Tensor& k, Tensor& v) {
  const int64_t B = q.size(0), heads = q.size(1), hd = q.size(3);
  auto make = [&](const Shape& shape) { return Tensor::view_of(allocate(bytes_for(DType::F32, numel(shape))), 0, shape, DType::F32); };
  std::vector<Tensor> qs, ks, vs;
  for (const QkvPart& p : parts) {
    const int64_t L = p.qkv.size(1);
    Tensor t = make({3, B, heads, L, hd});
    copy(p.qkv.reshape({B, L, 3, heads, hd}).permute({2, 0, 3, 1, 4}), t);
    Tensor qn = make({B, heads, L, hd}), kn = make({B, heads, L, hd});
    rms_norm(t.slice(0, 0, 1).reshape({B, heads, L, hd}), &p.q_scale, eps, qn);
    rms_norm(t.slice(0, 1, 1).reshape({B, heads, L, hd}), &p.k_scale, eps, kn);
    qs.push_back(qn);
    ks.push_back(kn);
    vs.push_back(t.slice(0, 2, 1).reshape({B, heads, L, hd}));
  }
  auto joined = [&](const std::vector<Tensor>& xs) {
    if (xs.size() == 1) return xs[0];
    Tensor out = make(q.shape());
    concat(xs, 2, out);
    return out;
  };
  rope(joined(qs), cos, sin, q);
  rope(joined(ks), cos, sin, k);
  if (vs.size() == 1) {
    copy(vs[0], v);
  } else {
    concat(vs, 2, v);
  }
}

}  // namespace fluxpipe
