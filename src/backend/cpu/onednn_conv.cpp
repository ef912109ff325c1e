#include "backend/cpu/onednn_conv.h"

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <dnnl.hpp>

namespace fluxpipe::cpu {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

struct Cached {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
};

struct ConvEngine {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  std::map<std::vector<int64_t>, Cached> cache;
};

ConvEngine& engine() {
  static ConvEngine e;
  return e;
}

}  // namespace

bool onednn_conv2d_bf16(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out) {
  try {
    ConvEngine& e = engine();
    dnnl::memory::dims src{x.size(0), x.size(1), x.size(2), x.size(3)};
    dnnl::memory::dims wei{w.size(0), w.size(1), w.size(2), w.size(3)};
    dnnl::memory::dims dst{out.size(0), out.size(1), out.size(2), out.size(3)};
    dnnl::memory::dims strides{p.stride, p.stride}, pad_l{p.pad_top, p.pad_left}, pad_r{p.pad_bottom, p.pad_right};
    std::vector<int64_t> key{src[0], src[1], src[2], src[3], wei[0], wei[2], wei[3], p.stride, p.pad_top, p.pad_left,
                             p.pad_bottom, p.pad_right, bias ? 1 : 0};
    Cached c;
    {
      std::lock_guard lock(e.mu);
      auto it = e.cache.find(key);
      if (it == e.cache.end()) {
        dnnl::memory::desc s_md(src, dt::bf16, tag::any), w_md(wei, dt::bf16, tag::any), d_md(dst, dt::f32, tag::any);
        dnnl::memory::desc b_md({wei[0]}, dt::f32, tag::a);
        auto d = bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                                        s_md, w_md, b_md, d_md, strides, pad_l, pad_r)
                      : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                                        s_md, w_md, d_md, strides, pad_l, pad_r);
        dnnl::convolution_forward::primitive_desc pd(d, e.eng);
        if (e.cache.size() > 128) e.cache.clear();
        it = e.cache.emplace(key, Cached{pd, dnnl::convolution_forward(pd)}).first;
      }
      c = it->second;
    }
    dnnl::stream stream(e.eng);
    // Our plain F32 tensors, reordered (and rounded to bf16) into the layouts oneDNN chose.
    dnnl::memory user_src({src, dt::f32, tag::nchw}, e.eng, x.data<float>());
    dnnl::memory user_dst({dst, dt::f32, tag::nchw}, e.eng, out.data<float>());
    std::vector<float> wf;
    const float* wp = w.data<float>();
    if (w.dtype() != DType::F32) {
      wf = w.to_floats();
      wp = wf.data();
    }
    dnnl::memory user_wei({wei, dt::f32, tag::oihw}, e.eng, const_cast<float*>(wp));
    dnnl::memory s(c.pd.src_desc(), e.eng), wm(c.pd.weights_desc(), e.eng), d(c.pd.dst_desc(), e.eng);
    dnnl::reorder(user_src, s).execute(stream, user_src, s);
    dnnl::reorder(user_wei, wm).execute(stream, user_wei, wm);
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, d}};
    std::vector<float> bf;
    if (bias) {
      bf = bias->to_floats();
      args.emplace(DNNL_ARG_BIAS, dnnl::memory({{wei[0]}, dt::f32, tag::a}, e.eng, bf.data()));
    }
    c.conv.execute(stream, args);
    dnnl::reorder(d, user_dst).execute(stream, d, user_dst);
    stream.wait();
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace fluxpipe::cpu
