// GGUF v3 (and v2): "GGUF", u32 version, u64 tensor count, u64 key-value count, the
// key-values, the tensor infos (name, n_dims, dims innermost first, ggml type, offset),
// then the data section at the next multiple of general.alignment (default 32).
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "io/weights.h"

namespace fluxpipe::io {

void write_file_atomically(const std::string& path, const std::string& header,
                           const std::vector<std::pair<uint64_t, const Tensor*>>& blobs, uint64_t data_start);

namespace {

using nlohmann::json;

enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// A bounds-checked little-endian reader over the mapped file.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n, std::string label) : p_(p), n_(n), label_(std::move(label)) {}
  [[noreturn]] void fail(const std::string& why) const {
    throw UserError("[gguf] " + label_ + ": " + why + " (at byte " + std::to_string(pos_) + ")");
  }
  void need(uint64_t k) const {
    if (k > n_ - pos_) fail("unexpected end of file");
  }
  template <typename T> T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    uint64_t len = get<uint64_t>();
    if (len > (1u << 24)) fail("string of " + std::to_string(len) + " bytes is implausibly long");
    need(len);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  size_t pos() const { return pos_; }
  size_t size() const { return n_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  std::string label_;
};

bool is_utf8(const std::string& s) {
  try {
    (void)json(s).dump();
    return true;
  } catch (const json::exception&) {
    return false;
  }
}

json read_value(Reader& r, uint32_t type, int depth) {
  switch (type) {
    case kU8: return r.get<uint8_t>();
    case kI8: return r.get<int8_t>();
    case kU16: return r.get<uint16_t>();
    case kI16: return r.get<int16_t>();
    case kU32: return r.get<uint32_t>();
    case kI32: return r.get<int32_t>();
    case kF32: return r.get<float>();
    case kBool: return r.get<uint8_t>() != 0;
    case kString: {
      std::string s = r.str();
      // JSON needs valid UTF-8; keep invalid strings as hex so nothing is lost or thrown later.
      if (is_utf8(s)) return s;
      std::string hex;
      static const char* digits = "0123456789abcdef";
      for (unsigned char c : s) hex += {digits[c >> 4], digits[c & 15]};
      return json{{"invalid_utf8_hex", hex}};
    }
    case kU64: return r.get<uint64_t>();
    case kI64: return r.get<int64_t>();
    case kF64: return r.get<double>();
    case kArray: {
      if (depth > 4) r.fail("arrays nested too deeply");
      uint32_t elem = r.get<uint32_t>();
      uint64_t count = r.get<uint64_t>();
      if (count > r.size() - r.pos()) r.fail("array of " + std::to_string(count) + " elements cannot fit in the file");
      json arr = json::array();
      for (uint64_t i = 0; i < count; ++i) arr.push_back(read_value(r, elem, depth + 1));
      return arr;
    }
    default: r.fail("unknown value type " + std::to_string(type));
  }
}

struct Info {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t offset;
  uint64_t bytes;
};

}  // namespace

WeightSet parse_gguf(const std::shared_ptr<Storage>& file, const std::string& label) {
  Reader r(static_cast<const uint8_t*>(file->data), file->bytes, label);
  if (file->bytes < 4 || std::memcmp(file->data, "GGUF", 4) != 0) r.fail("not a GGUF file (bad magic)");
  r.get<uint32_t>();
  uint32_t version = r.get<uint32_t>();
  if (version != 2 && version != 3) r.fail("unsupported GGUF version " + std::to_string(version));
  uint64_t n_tensors = r.get<uint64_t>();
  uint64_t n_kv = r.get<uint64_t>();
  // Each tensor info takes at least 24 bytes, each key-value at least 13: bound the counts by the file size.
  if (n_tensors > file->bytes / 24 || n_kv > file->bytes / 13) r.fail("tensor or key-value count larger than the file can hold");

  WeightSet ws;
  ws.files.push_back(label);
  uint64_t alignment = 32;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.str();
    if (!is_utf8(key)) r.fail("a metadata key is not valid UTF-8");
    uint32_t type = r.get<uint32_t>();
    json value = read_value(r, type, 0);
    if (key == "general.alignment") {
      if (!value.is_number_unsigned() || value.get<uint64_t>() == 0 || value.get<uint64_t>() > 65536 ||
          (value.get<uint64_t>() & (value.get<uint64_t>() - 1)) != 0) {
        r.fail("general.alignment must be a power of two up to 65536");
      }
      alignment = value.get<uint64_t>();
    }
    ws.metadata[key] = std::move(value);
  }
  std::vector<Info> infos;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info t;
    t.name = r.str();
    auto tfail = [&](const std::string& why) { r.fail("tensor '" + t.name + "': " + why); };
    uint32_t n_dims = r.get<uint32_t>();
    if (n_dims == 0 || n_dims > 8) tfail("has " + std::to_string(n_dims) + " dimensions");
    std::vector<uint64_t> ne(n_dims);
    unsigned __int128 count = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ne[d] = r.get<uint64_t>();
      if (ne[d] > (uint64_t{1} << 40)) tfail("dimension " + std::to_string(ne[d]) + " is implausibly large");
      count *= ne[d];
      if (count > (static_cast<unsigned __int128>(1) << 50)) tfail("element count overflows");
    }
    uint32_t ggml = r.get<uint32_t>();
    std::optional<DType> dt = dtype_from_ggml(ggml);
    if (!dt) tfail("unsupported ggml type " + std::to_string(ggml));
    t.dtype = *dt;
    if (ne[0] % static_cast<uint64_t>(info(t.dtype).block_elems) != 0) {
      tfail("innermost dimension " + std::to_string(ne[0]) + " is not a multiple of the " + info(t.dtype).name +
            " block size " + std::to_string(info(t.dtype).block_elems));
    }
    t.offset = r.get<uint64_t>();
    if (t.offset % alignment != 0) tfail("offset " + std::to_string(t.offset) + " is not aligned to " + std::to_string(alignment));
    for (uint32_t d = n_dims; d-- > 0;) t.shape.push_back(static_cast<int64_t>(ne[d]));   // row-major order
    t.bytes = static_cast<uint64_t>(count) / static_cast<uint64_t>(info(t.dtype).block_elems) *
              static_cast<uint64_t>(info(t.dtype).block_bytes);
    infos.push_back(std::move(t));
  }
  uint64_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
  if (data_start > file->bytes) r.fail("data section starts past the end of the file");
  uint64_t data_size = file->bytes - data_start;
  for (const Info& t : infos) {
    if (t.offset > data_size || t.bytes > data_size - t.offset) {
      r.fail("tensor '" + t.name + "' (" + info(t.dtype).name + shape_str(t.shape) + ", " + std::to_string(t.bytes) +
             " bytes at " + std::to_string(t.offset) + ") runs past the end of the file (truncated?)");
    }
  }
  std::vector<const Info*> sorted;
  for (const Info& t : infos) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const Info* a, const Info* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->offset < sorted[i - 1]->offset + sorted[i - 1]->bytes && sorted[i]->bytes > 0) {
      r.fail("tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name + "' overlap");
    }
  }
  for (const Info& t : infos) {
    if (!ws.tensors.emplace(t.name, Tensor::view_of(file, data_start + t.offset, t.shape, t.dtype)).second) {
      r.fail("tensor name '" + t.name + "' appears twice");
    }
  }
  return ws;
}

WeightSet load_gguf(const std::string& path) { return parse_gguf(map_file(path), path); }

namespace {

void put_u32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& out, const std::string& s) {
  put_u64(out, s.size());
  out += s;
}

uint32_t value_type(const json& v, const std::string& key) {
  if (v.is_string()) return kString;
  if (v.is_boolean()) return kBool;
  if (v.is_number_float()) return kF32;
  if (v.is_number_unsigned()) return key == "general.alignment" ? kU32 : kU64;
  if (v.is_number_integer()) return kI64;
  if (v.is_array()) return kArray;
  throw UserError("[gguf] metadata '" + key + "' has a type GGUF cannot hold");
}

void put_value(std::string& out, const json& v, uint32_t type, const std::string& key) {
  switch (type) {
    case kString: put_str(out, v.get<std::string>()); return;
    case kBool: out += static_cast<char>(v.get<bool>() ? 1 : 0); return;
    case kF32: { float f = v.get<float>(); out.append(reinterpret_cast<const char*>(&f), 4); return; }
    case kU32: put_u32(out, v.get<uint32_t>()); return;
    case kU64: put_u64(out, v.get<uint64_t>()); return;
    case kI64: { int64_t i = v.get<int64_t>(); out.append(reinterpret_cast<const char*>(&i), 8); return; }
    case kArray: {
      uint32_t elem = v.empty() ? kI64 : value_type(v[0], key);
      for (const json& e : v) {
        if (value_type(e, key) != elem) throw UserError("[gguf] metadata array '" + key + "' mixes types");
      }
      put_u32(out, elem);
      put_u64(out, v.size());
      for (const json& e : v) put_value(out, e, elem, key);
      return;
    }
  }
}

}  // namespace

void write_gguf(const std::string& path, const NamedTensors& tensors, const json& metadata, uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) throw UserError("[gguf] alignment must be a power of two");
  json kv = metadata;
  kv["general.alignment"] = alignment;
  std::string out = "GGUF";
  put_u32(out, 3);
  put_u64(out, tensors.size());
  put_u64(out, kv.size());
  for (auto& [key, value] : kv.items()) {
    put_str(out, key);
    uint32_t type = value_type(value, key);
    put_u32(out, type);
    put_value(out, value, type, key);
  }
  std::vector<std::pair<uint64_t, const Tensor*>> blobs;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    std::optional<uint32_t> ggml = ggml_type_id(t.dtype());
    if (!ggml) throw UserError("[gguf] cannot store '" + name + "' of type " + t.describe());
    put_str(out, name);
    put_u32(out, static_cast<uint32_t>(t.dim()));
    for (int d = t.dim(); d-- > 0;) put_u64(out, static_cast<uint64_t>(t.size(d)));
    put_u32(out, *ggml);
    put_u64(out, offset);
    blobs.emplace_back(offset, &t);
    offset = (offset + t.nbytes() + alignment - 1) / alignment * alignment;
  }
  uint64_t data_start = (out.size() + alignment - 1) / alignment * alignment;
  out.resize(data_start, '\0');
  write_file_atomically(path, out, blobs, data_start);
}

}  // namespace fluxpipe::io
