// safetensors: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data section; offsets are relative to its start.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/weights.h"

namespace fluxpipe::io {

using nlohmann::json;

const Tensor& WeightSet::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    std::string where = files.empty() ? "weights" : files.front();
    if (files.size() > 1) where += " (+" + std::to_string(files.size() - 1) + " files)";
    throw UserError("[weights] " + where + ": no tensor '" + name + "'");
  }
  return it->second;
}

const Tensor& WeightSet::expect(const std::string& name, const Shape& shape, const char* who) const {
  const Tensor& t = at(name);
  if (t.shape() != shape) {
    throw UserError(std::string("[") + who + "] tensor '" + name + "' is " + t.describe() + ", expected shape " + shape_str(shape));
  }
  return t;
}

int WeightSet::count_numbered(const std::string& prefix, const std::string& suffix) const {
  int n = 0;
  while (has(prefix + std::to_string(n) + suffix)) ++n;
  return n;
}

std::shared_ptr<Storage> map_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw UserError("[weights] cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw UserError("[weights] '" + path + "' is not a regular file");
  }
  auto s = std::make_shared<Storage>();
  s->bytes = static_cast<size_t>(st.st_size);
  s->read_only = true;
  s->file_mapped = true;
  if (s->bytes > 0) {
    void* p = mmap(nullptr, s->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      throw UserError("[weights] cannot map '" + path + "': " + std::strerror(err));
    }
    s->data = p;
    s->release = [](Storage& m) { munmap(m.data, m.bytes); };
  }
  close(fd);
  return s;
}

size_t total_bytes(const WeightSet& w) {
  size_t n = 0;
  for (const auto& [name, t] : w.tensors) n += t.nbytes();
  return n;
}

size_t release_resident_pages(const WeightSet& w) {
  size_t advised = 0;
  for (const auto& [name, t] : w.tensors) {
    if (t.defined() && t.storage()->file_mapped) advised += drop_mapped_pages(t.data<uint8_t>(), t.nbytes());
  }
  return advised;
}

namespace {

[[noreturn]] void bad(const std::string& label, const std::string& why) {
  throw UserError("[safetensors] " + label + ": " + why);
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

}  // namespace

WeightSet parse_safetensors(const std::shared_ptr<Storage>& file, const std::string& label) {
  const uint8_t* base = static_cast<const uint8_t*>(file->data);
  size_t size = file->bytes;
  if (size < 8) bad(label, "file is " + std::to_string(size) + " bytes, too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8) bad(label, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  if (n > (100u << 20)) bad(label, "header length " + std::to_string(n) + " is over 100 MiB");
  json header = json::parse(base + 8, base + 8 + n, nullptr, false);
  if (header.is_discarded() || !header.is_object()) bad(label, "header is not a JSON object");
  uint64_t data_start = 8 + n;
  uint64_t data_size = size - data_start;

  WeightSet ws;
  ws.files.push_back(label);
  std::vector<Entry> entries;
  for (auto& item : header.items()) {
    const std::string name = item.key();
    const json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad(label, "__metadata__ is not an object");
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) bad(label, "__metadata__ value '" + k + "' is not a string");
      }
      ws.metadata = v;
      continue;
    }
    auto tbad = [&](const std::string& why) { bad(label, "tensor '" + name + "': " + why); };
    if (!v.is_object()) tbad("entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) tbad("missing string 'dtype'");
    if (sh == v.end() || !sh->is_array()) tbad("missing array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2) tbad("missing 'data_offsets' [begin, end]");
    std::optional<DType> dtype = dtype_from_safetensors(dt->get<std::string>());
    if (!dtype) tbad("unsupported dtype '" + dt->get<std::string>() + "'");
    Entry e{name, *dtype, {}, 0, 0};
    unsigned __int128 count = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) tbad("shape has a non-integer or negative dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 40)) tbad("dimension " + std::to_string(dim) + " is implausibly large");
      e.shape.push_back(static_cast<int64_t>(dim));
      count *= dim;
      if (count > (static_cast<unsigned __int128>(1) << 50)) tbad("element count overflows");
    }
    for (const json& o : *off) {
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0)) tbad("data_offsets are not non-negative integers");
    }
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.begin > e.end) tbad("data_offsets begin " + std::to_string(e.begin) + " > end " + std::to_string(e.end));
    if (e.end > data_size) {
      tbad("data ends at " + std::to_string(e.end) + " but the data section has " + std::to_string(data_size) +
           " bytes (truncated file?)");
    }
    uint64_t expect = static_cast<uint64_t>(count) * static_cast<uint64_t>(info(*dtype).block_bytes);
    if (e.end - e.begin != expect) {
      tbad(std::string(info(*dtype).name) + shape_str(e.shape) + " needs " + std::to_string(expect) +
           " bytes but data_offsets span " + std::to_string(e.end - e.begin));
    }
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].begin < entries[i - 1].end && entries[i].begin != entries[i].end) {
      bad(label, "tensors '" + entries[i - 1].name + "' and '" + entries[i].name + "' overlap");
    }
  }
  for (Entry& e : entries) {
    ws.tensors.emplace(e.name, Tensor::view_of(file, data_start + e.begin, e.shape, e.dtype));
  }
  return ws;
}

WeightSet load_safetensors(const std::string& path) { return parse_safetensors(map_file(path), path); }

WeightSet load_safetensors_index(const std::string& index_path) {
  std::ifstream in(index_path);
  if (!in) throw UserError("[safetensors] cannot open index '" + index_path + "'");
  json index = json::parse(in, nullptr, false);
  auto map = index.is_object() ? index.find("weight_map") : index.end();
  if (index.is_discarded() || map == index.end() || !map->is_object()) {
    throw UserError("[safetensors] " + index_path + ": not an index (no \"weight_map\" object)");
  }
  std::filesystem::path dir = std::filesystem::path(index_path).parent_path();
  std::map<std::string, WeightSet> shards;
  WeightSet all;
  all.files.push_back(index_path);
  if (index.contains("metadata") && index["metadata"].is_object()) all.metadata = index["metadata"];
  for (auto& [name, shard] : map->items()) {
    if (!shard.is_string()) throw UserError("[safetensors] " + index_path + ": shard of '" + name + "' is not a string");
    std::string file = shard.get<std::string>();
    if (file.find('/') != std::string::npos || file == "..") {
      throw UserError("[safetensors] " + index_path + ": shard name '" + file + "' is not a plain file name");
    }
    auto it = shards.find(file);
    if (it == shards.end()) {
      it = shards.emplace(file, load_safetensors((dir / file).string())).first;
      all.files.push_back((dir / file).string());
    }
    auto t = it->second.tensors.find(name);
    if (t == it->second.tensors.end()) {
      throw UserError("[safetensors] " + index_path + ": tensor '" + name + "' is not in its shard '" + file + "'");
    }
    all.tensors.emplace(name, t->second);
  }
  return all;
}

WeightSet load_weights(const std::string& path) {
  namespace fs = std::filesystem;
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (fs::is_directory(path)) {
    std::vector<std::string> indexes, singles;
    for (const auto& e : fs::directory_iterator(path)) {
      std::string p = e.path().string();
      if (ends_with(p, ".safetensors.index.json")) indexes.push_back(p);
      else if (ends_with(p, ".safetensors")) singles.push_back(p);
    }
    if (indexes.size() == 1) return load_safetensors_index(indexes[0]);
    if (indexes.empty() && singles.size() == 1) return load_safetensors(singles[0]);
    throw UserError("[weights] folder '" + path + "' holds " + std::to_string(indexes.size()) + " index files and " +
                    std::to_string(singles.size()) + " safetensors files; expected one index or one file");
  }
  if (ends_with(path, ".gguf")) return load_gguf(path);
  if (ends_with(path, ".index.json")) return load_safetensors_index(path);
  if (ends_with(path, ".safetensors")) return load_safetensors(path);
  // Unknown extension: look at the magic.
  std::shared_ptr<Storage> file = map_file(path);
  if (file->bytes >= 4 && std::memcmp(file->data, "GGUF", 4) == 0) return parse_gguf(file, path);
  return parse_safetensors(file, path);
}

namespace {
void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw IoError("[weights] writing '" + path + "' failed: " + std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

// Shared by both writers: header bytes, then each tensor's bytes at its offset (zero padding
// between), written to path.tmp, flushed, renamed.
void write_file_atomically(const std::string& path, const std::string& header,
                           const std::vector<std::pair<uint64_t, const Tensor*>>& blobs, uint64_t data_start) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("[weights] cannot create '" + tmp + "': " + std::strerror(errno));
  try {
    write_all(fd, header.data(), header.size(), tmp);
    uint64_t pos = header.size();
    std::vector<uint8_t> zeros(4096, 0);
    for (const auto& [offset, t] : blobs) {
      uint64_t at = data_start + offset;
      while (pos < at) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), at - pos));
        write_all(fd, zeros.data(), n, tmp);
        pos += n;
      }
      if (!t->is_contiguous()) throw UserError("[weights] tensor " + t->describe() + " is not contiguous");
      write_all(fd, t->data<uint8_t>(), t->nbytes(), tmp);
      pos += t->nbytes();
    }
    if (fsync(fd) != 0) throw IoError("[weights] fsync of '" + tmp + "' failed: " + std::strerror(errno));
  } catch (...) {
    close(fd);
    unlink(tmp.c_str());
    throw;
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) throw IoError("[weights] rename to '" + path + "' failed: " + std::strerror(errno));
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::pair<uint64_t, const Tensor*>> blobs;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const char* dt = safetensors_name(t.dtype());
    if (!dt) throw UserError("[safetensors] cannot store '" + name + "' of type " + t.describe() + " (block types need GGUF)");
    if (header.contains(name)) throw UserError("[safetensors] duplicate tensor name '" + name + "'");
    header[name] = {{"dtype", dt}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    blobs.emplace_back(offset, &t);
    offset += t.nbytes();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text += ' ';   // data section 8-byte aligned
  std::string bytes(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  write_file_atomically(path, bytes + text, blobs, 8 + n);
}

}  // namespace fluxpipe::io
