// A Backend that forwards every call to another and adds up the wall time of each op (linear
// by its K x N, a convolution by its shape, so the table shows which products and which glue ops a step spends its time
// in). Bench-only: `flux_bench step --profile 1`. Not thread-safe: one engine thread calls it.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"

namespace fluxpipe::bench {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  std::string name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  std::shared_ptr<Storage> allocate(size_t bytes) override { return inner_.allocate(bytes); }
  void transfer(const Tensor& src, Tensor& dst) override { timed("transfer", [&] { inner_.transfer(src, dst); }); }
  void zero(Tensor& out) override { timed("zero", [&] { inner_.zero(out); }); }
  void synchronize() override { inner_.synchronize(); }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out, Compute c) override {
    std::string key = "linear K" + std::to_string(w.size(1)) + " N" + std::to_string(w.size(0)) + " " + fluxpipe::name(w.dtype());
    double flop = 2.0 * static_cast<double>(x.numel() / x.size(-1)) * static_cast<double>(w.size(0)) * static_cast<double>(w.size(1));
    timed(key, [&] { inner_.linear(x, w, bias, out, c); }, flop);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
                 Tensor& out, Compute c) override {
    timed("attention", [&] { inner_.attention(q, k, v, scale, bias, causal, out, c); });
  }
  void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out) override {
    timed("layer_norm", [&] { inner_.layer_norm(x, w, b, eps, out); });
  }
  void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out) override {
    timed("rms_norm", [&] { inner_.rms_norm(x, w, eps, out); });
  }
  void layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor& out) override {
    timed("layer_norm_modulate", [&] { inner_.layer_norm_modulate(x, shift, scale, eps, out); });
  }
  void add_gated(const Tensor& x, const Tensor& gate, const Tensor& y, Tensor& out) override {
    timed("add_gated", [&] { inner_.add_gated(x, gate, y, out); });
  }
  void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) override {
    timed("group_norm", [&] { inner_.group_norm(x, groups, w, b, eps, silu, out); });
  }
  bool has_nhwc() const override { return inner_.has_nhwc(); }
  void group_norm_nhwc(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, bool silu, Tensor& out) override {
    timed("group_norm", [&] { inner_.group_norm_nhwc(x, groups, w, b, eps, silu, out); });
  }
  void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) override {
    timed("rope", [&] { inner_.rope(x, cos, sin, out); });
  }
  void qkv_heads(const std::vector<QkvPart>& parts, const Tensor& cos, const Tensor& sin, float eps, Tensor& q, Tensor& k,
                 Tensor& v) override {
    timed("qkv_heads", [&] { inner_.qkv_heads(parts, cos, sin, eps, q, k, v); });
  }
  void unary(Unary op, const Tensor& x, Tensor& out) override {
    static const char* names[] = {"gelu_tanh", "gelu_erf", "silu", "quick_gelu"};
    timed(names[static_cast<int>(op)], [&] { inner_.unary(op, x, out); });
  }
  void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out) override {
    static const char* names[] = {"add", "sub", "mul", "div"};
    timed(names[static_cast<int>(op)], [&] { inner_.binary(op, a, b, out); });
  }
  void softmax(const Tensor& x, Tensor& out) override {
    timed("softmax", [&] { inner_.softmax(x, out); });
  }
  void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out, Compute c) override {
    // By kernel, channels and output size: x [B, Cin, H, W], w [Cout, Cin, k, k], out [B, Cout, Ho, Wo].
    const bool nhwc = p.layout == Layout::nhwc;
    std::string key = "conv" + std::to_string(w.size(2)) + "x" + std::to_string(w.size(3)) + " " + std::to_string(w.size(1)) +
                      "->" + std::to_string(w.size(0)) + " @" + std::to_string(out.size(nhwc ? 1 : 2)) + "x" +
                      std::to_string(out.size(nhwc ? 2 : 3)) + (nhwc ? " nhwc" : "");
    double flop = 2.0 * static_cast<double>(out.numel()) * static_cast<double>(w.size(1) * w.size(2) * w.size(3));
    timed(key, [&] { inner_.conv2d(x, w, bias, p, out, c); }, flop);
  }
  void upsample_nearest2x(const Tensor& x, Tensor& out) override {
    timed("upsample", [&] { inner_.upsample_nearest2x(x, out); });
  }
  void upsample_nearest2x_nhwc(const Tensor& x, Tensor& out) override {
    timed("upsample", [&] { inner_.upsample_nearest2x_nhwc(x, out); });
  }
  void concat(const std::vector<Tensor>& xs, int dim, Tensor& out) override {
    timed(out.numel() >= (1 << 20) ? "concat (1M+ values)" : "concat (small)", [&] { inner_.concat(xs, dim, out); });
  }
  void copy(const Tensor& x, Tensor& out) override {
    // By size: the large copies (head permutes, slices) are worth fusing away, the small not.
    timed(out.numel() >= (1 << 20) ? "copy (1M+ values)" : "copy (small)", [&] { inner_.copy(x, out); });
  }
  void embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    timed("embedding", [&] { inner_.embedding(table, ids, out); });
  }
  void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out) override {
    timed("position_bias", [&] { inner_.position_bias(table, buckets, mask, out); });
  }
  void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out) override {
    timed("timestep_embedding", [&] { inner_.timestep_embedding(t, time_factor, max_period, out); });
  }
  void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin) override {
    timed("rope_tables", [&] { inner_.rope_tables(ids, axes_dim, theta, cos, sin); });
  }
  void to_u8(const Tensor& image, Tensor& out) override { timed("to_u8", [&] { inner_.to_u8(image, out); }); }
  void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0, Tensor& acc,
                  Tensor* wsum) override {
    timed("blend_tile", [&] { inner_.blend_tile(tile, wy, wx, b, y0, x0, acc, wsum); });
  }

  // Prints ops by total time, with calls and share of `total_s` (the step as timed outside).
  void print(double total_s) const {
    std::vector<std::pair<std::string, Entry>> rows(entries_.begin(), entries_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    double ops = 0;
    for (const auto& [k, e] : rows) ops += e.seconds;
    std::printf("  %-34s %6s %10s %7s %9s\n", "op", "calls", "seconds", "share", "GFLOP/s");
    for (const auto& [k, e] : rows) {
      std::printf("  %-34s %6d %10.4f %6.1f%%", k.c_str(), e.calls, e.seconds, 100.0 * e.seconds / total_s);
      if (e.flop > 0) std::printf(" %9.0f", e.flop / e.seconds / 1e9);
      std::printf("\n");
    }
    std::printf("  %-34s %6s %10.4f %6.1f%%\n", "(outside the backend)", "", total_s - ops, 100.0 * (total_s - ops) / total_s);
  }
  void clear() { entries_.clear(); }

 private:
  struct Entry {
    int calls = 0;
    double seconds = 0;
    double flop = 0;  // products and convolutions: multiply-adds x 2, for the rate column
  };
  template <class F>
  void timed(const std::string& key, F&& f, double flop = 0) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    Entry& e = entries_[key];
    ++e.calls;
    e.flop += flop;
    e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  Backend& inner_;
  std::map<std::string, Entry> entries_;
};

}  // namespace fluxpipe::bench
