#include "backend/cpu/onednn_conv.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include <dnnl.hpp>

#include "backend/cpu/dequant_avx512.h"
#include "backend/cpu/isa.h"
#include "backend/cpu/weight_copies.h"
#include "core/thread_pool.h"

namespace fluxpipe::cpu {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// One convolution shape: the primitive oneDNN chose and the reorders between our plain F32
// tensors (nchw or nhwc) and its layouts, all made once (making them JIT-compiles code). A
// reorder is left out where oneDNN's layout is ours already (nhwc output: the convolution writes
// straight into it).
struct Plan {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
  std::optional<dnnl::reorder> to_src, from_dst;
};

// A weight tensor reordered once into the layout a plan wants (kept in a WeightCopies, which
// notices when the weights' storage is gone).
struct Packed {
  dnnl::memory::desc desc;
  Tensor data;
};

struct ConvEngine {
  bool isa_held = (isa_apply_to_onednn(), true);   // before the engine: FLUXPIPE_ISA holds oneDNN too
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  std::map<std::vector<int64_t>, Plan> plans;
  WeightCopies<Packed> packed;
};

ConvEngine& engine() {
  static ConvEngine e;
  return e;
}

constexpr size_t kMaxPackedBytes = size_t{1} << 30;   // about six FLUX.1 decoders' worth of layouts

dnnl::memory on(const dnnl::memory::desc& d, const dnnl::engine& eng, Tensor* keep) {
  *keep = Tensor::empty({static_cast<int64_t>(d.get_size())}, DType::U8);
  return dnnl::memory(d, eng, keep->data<uint8_t>());
}

// The packed weights for `plan`, made on first use. Caller holds e.mu.
const Tensor& packed_weights(ConvEngine& e, const Plan& plan, const Tensor& w, dnnl::stream& stream, bool round_bf16) {
  const dnnl::memory::desc want = plan.pd.weights_desc();
  const void* addr = w.data<uint8_t>();
  if (const Packed* hit = e.packed.find(addr, w.storage(), [&](const Packed& p) { return p.desc == want; })) return hit->data;
  dnnl::memory::dims wei{w.size(0), w.size(1), w.size(2), w.size(3)};
  std::vector<float> wf;
  const float* wp = w.data<float>();
  if (w.dtype() != DType::F32 || round_bf16) {
    wf = w.to_floats();
    if (round_bf16) {
      round_to_bf16_values(wf.data(), static_cast<int64_t>(wf.size()));
    }
    wp = wf.data();
  }
  dnnl::memory user({wei, dt::f32, tag::oihw}, e.eng, const_cast<float*>(wp));
  Packed p{want, {}};
  dnnl::memory m = on(want, e.eng, &p.data);
  dnnl::reorder(user, m).execute(stream, user, m);
  stream.wait();
  const size_t bytes = p.data.nbytes();
  return e.packed.add(addr, w.storage(), std::move(p), bytes, kMaxPackedBytes).data;
}

}  // namespace

namespace {

// `bf16`: oneDNN's bf16 convolution (it rounds while reordering); otherwise F32 on inputs the
// caller rounded to bf16 values (`round_weights`: the weights are rounded while packing).
bool conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out, bool bf16) {
  const dt data = bf16 ? dt::bf16 : dt::f32;
  try {
    ConvEngine& e = engine();
    // oneDNN's dims are always N, C, H, W; the tag says how they lie in memory.
    const bool nhwc = p.layout == Layout::nhwc;
    auto nchw_dims = [&](const Tensor& t) {
      return nhwc ? dnnl::memory::dims{t.size(0), t.size(3), t.size(1), t.size(2)}
                  : dnnl::memory::dims{t.size(0), t.size(1), t.size(2), t.size(3)};
    };
    dnnl::memory::dims src = nchw_dims(x), dst = nchw_dims(out);
    dnnl::memory::dims wei{w.size(0), w.size(1), w.size(2), w.size(3)};
    dnnl::memory::dims strides{p.stride, p.stride}, pad_l{p.pad_top, p.pad_left}, pad_r{p.pad_bottom, p.pad_right};
    const tag user_tag = nhwc ? tag::nhwc : tag::nchw;
    std::vector<int64_t> key{src[0], src[1], src[2], src[3], wei[0], wei[2], wei[3], p.stride, p.pad_top, p.pad_left,
                             p.pad_bottom, p.pad_right, bias ? 1 : 0, bf16 ? 1 : 0, nhwc ? 1 : 0};
    dnnl::stream stream(e.eng);
    const dnnl::memory::desc user_src(src, dt::f32, user_tag), user_dst(dst, dt::f32, user_tag);
    Plan plan;
    Tensor wpk;
    {
      std::lock_guard lock(e.mu);
      auto it = e.plans.find(key);
      if (it == e.plans.end()) {
        dnnl::memory::desc s_md(src, data, tag::any), w_md(wei, data, tag::any), d_md(dst, dt::f32, tag::any);
        dnnl::memory::desc b_md({wei[0]}, dt::f32, tag::a);
        auto d = bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                                        s_md, w_md, b_md, d_md, strides, pad_l, pad_r)
                      : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                                        s_md, w_md, d_md, strides, pad_l, pad_r);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);   // from our allocator, not fresh pages per call
        dnnl::convolution_forward::primitive_desc pd(d, attr, e.eng);
        Plan made{pd, dnnl::convolution_forward(pd), std::nullopt, std::nullopt};
        if (pd.src_desc() != user_src) made.to_src = dnnl::reorder(dnnl::reorder::primitive_desc(e.eng, user_src, e.eng, pd.src_desc()));
        if (pd.dst_desc() != user_dst) made.from_dst = dnnl::reorder(dnnl::reorder::primitive_desc(e.eng, pd.dst_desc(), e.eng, user_dst));
        if (e.plans.size() > 128) e.plans.clear();
        it = e.plans.emplace(key, std::move(made)).first;
      }
      plan = it->second;
      wpk = packed_weights(e, plan, w, stream, !bf16);
    }
    // Our plain F32 tensors, reordered (and rounded to bf16) into the layouts oneDNN chose.
    dnnl::memory user_s(user_src, e.eng, const_cast<float*>(x.data<float>()));
    dnnl::memory user_d(user_dst, e.eng, out.data<float>());
    Tensor s_buf, d_buf, pad_buf;
    dnnl::memory s = plan.to_src ? on(plan.pd.src_desc(), e.eng, &s_buf) : user_s;
    dnnl::memory d = plan.from_dst ? on(plan.pd.dst_desc(), e.eng, &d_buf) : user_d;
    dnnl::memory scratch = on(plan.pd.scratchpad_desc(), e.eng, &pad_buf);
    dnnl::memory wm(plan.pd.weights_desc(), e.eng, wpk.data<uint8_t>());
    if (plan.to_src) plan.to_src->execute(stream, user_s, s);
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, d},
                                               {DNNL_ARG_SCRATCHPAD, scratch}};
    std::vector<float> bf;
    if (bias) {
      bf = bias->to_floats();
      args.emplace(DNNL_ARG_BIAS, dnnl::memory({{wei[0]}, dt::f32, tag::a}, e.eng, bf.data()));
    }
    plan.conv.execute(stream, args);
    if (plan.from_dst) plan.from_dst->execute(stream, d, user_d);
    stream.wait();
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace

size_t release_conv_weights(const Storage* of) {
  ConvEngine& e = engine();
  std::lock_guard lock(e.mu);
  return e.packed.release(of);
}

bool onednn_conv2d_bf16(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out) {
  return conv2d(x, w, bias, p, out, true);
}

bool onednn_conv2d_bf16_values_f32(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out) {
  Tensor rounded = Tensor::empty(x.shape(), DType::F32);
  const float* src = x.data<float>();
  float* dst = rounded.data<float>();
  const int64_t n = x.numel();
  ThreadPool::global().parallel_for(n / 4096 + 1, [&](int, int64_t b, int64_t e) {
    int64_t lo = b * 4096, hi = std::min(n, e * 4096);
    if (lo >= hi) return;
    std::memcpy(dst + lo, src + lo, static_cast<size_t>(hi - lo) * 4);
    round_to_bf16_values(dst + lo, hi - lo);
  });
  return conv2d(rounded, w, bias, p, out, false);
}

}  // namespace fluxpipe::cpu
