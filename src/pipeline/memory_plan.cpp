#include "pipeline/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <string>

namespace fluxpipe {
namespace {

size_t read_number(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return 0;
  try {
    return static_cast<size_t>(std::stoull(s));
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

size_t machine_memory_bytes() {
  size_t total = 0;
  std::ifstream in("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") {
      total = kb * 1024;
      break;
    }
  }
  // cgroup v2, then v1 (a v1 "no limit" is a huge number, which min() ignores).
  for (const char* p : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    size_t limit = read_number(p);
    if (limit > 0 && (total == 0 || limit < total)) total = limit;
  }
  return total;
}

// A "Key:   N kB" line of /proc/self/status, in bytes (0 when absent).
size_t status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return static_cast<size_t>(std::stoull(line.substr(key.size()))) * 1024;
  }
  return 0;
}

size_t resident_bytes() { return status_bytes("VmRSS:"); }
size_t peak_resident_bytes() { return status_bytes("VmHWM:"); }

int MemoryPlanner::add_part(std::string name, size_t bytes, std::function<void()> release) {
  parts_.push_back({std::move(name), bytes, std::move(release), false});
  return static_cast<int>(parts_.size() - 1);
}

size_t MemoryPlanner::total(const std::vector<int>& needs, bool keep_others) const {
  size_t t = reserved_;
  for (size_t i = 0; i < parts_.size(); ++i) {
    bool needed = std::find(needs.begin(), needs.end(), static_cast<int>(i)) != needs.end();
    if (needed || (keep_others && parts_[i].resident)) t += parts_[i].bytes;
  }
  return t;
}

size_t MemoryPlanner::room_with_only(const std::vector<int>& needs) const {
  size_t t = total(needs, false);
  return t >= budget_ ? 0 : budget_ - t;
}

size_t MemoryPlanner::room_keeping(const std::vector<int>& needs) const {
  size_t t = total(needs, true);
  return t >= budget_ ? 0 : budget_ - t;
}

std::vector<std::string> MemoryPlanner::enter(const std::vector<int>& needs, size_t activation_bytes) {
  std::vector<std::string> released;
  std::vector<size_t> order(parts_.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return parts_[a].bytes > parts_[b].bytes; });
  for (size_t i : order) {
    if (total(needs, true) + activation_bytes <= budget_) break;
    Part& p = parts_[i];
    bool needed = std::find(needs.begin(), needs.end(), static_cast<int>(i)) != needs.end();
    if (needed || !p.resident) continue;
    p.release();
    p.resident = false;
    released.push_back(p.name);
  }
  for (int n : needs) parts_.at(static_cast<size_t>(n)).resident = true;
  return released;
}

// Measured with `fluxpipe generate` on the real-width test model (FLUXPIPE_THREADS=2): the
// transformer's live activations per token of the joint sequence for one image (F32 hidden
// states, the single blocks' 21504-wide first projection, attention tiles), with margin.
size_t denoise_activation_bytes(int64_t batch, int64_t image_tokens, int64_t text_tokens, int64_t hidden) {
  const double per_token = 100.0 * static_cast<double>(hidden);   // ~300 KiB at hidden 3072
  const size_t fixed = (size_t{256} << 20) / 3072 * static_cast<size_t>(hidden);   // 256 MiB at hidden 3072
  return static_cast<size_t>(per_token * static_cast<double>(batch * (image_tokens + text_tokens))) + fixed;
}

// Both prompts through CLIP-L and T5-XXL (the T5 layers' 10240-wide feed-forward, the attention
// scores of 256-512 tokens), with margin: 512 MiB at T5-XXL's width of 4096.
size_t text_activation_bytes(int64_t t5_width) { return (size_t{128} << 10) * static_cast<size_t>(t5_width); }

// The autoencoder's decoder holds a handful of 128- and 256-channel F32 maps at full size at
// once (the peak is at the last upsampling); measured ~3.7 KB per output pixel at 1024².
constexpr double kDecodeBytesPerPixel = 4096.0;
// Whatever the size: 64 MiB of small maps and oneDNN's workspace, and the CPU's Winograd
// convolutions' two scratch buffers of up to 64 MiB (backend/cpu/winograd.cpp).
constexpr size_t kDecodeFixedBytes = size_t{192} << 20;

size_t decode_activation_bytes(int64_t batch, int64_t pixels) {
  return static_cast<size_t>(kDecodeBytesPerPixel * static_cast<double>(batch * pixels)) + kDecodeFixedBytes;
}

int64_t batch_that_fits(int64_t count, size_t weights, size_t room, const std::function<size_t(int64_t)>& act) {
  if (act(1) > room) return 0;
  if (weights + act(1) > room) return 1;
  int64_t b = 1;
  while (b < count && weights + act(b + 1) <= room) ++b;
  return b;
}

int64_t decode_tile_for(size_t room, int64_t factor) {
  double px = std::max(0.0, static_cast<double>(room) - static_cast<double>(kDecodeFixedBytes)) / kDecodeBytesPerPixel;
  int64_t side = static_cast<int64_t>(std::sqrt(px)) / factor / 8 * 8;
  return std::max<int64_t>(32, side);
}

}  // namespace fluxpipe
