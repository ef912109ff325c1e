// fluxpipe io: reading and writing weight files — safetensors (single files and diffusers'
// sharded folders with *.index.json) and GGUF v3.
//
// Reading maps the file read-only and returns tensors that are views into the mapping (no
// copy; the mapping lives while any tensor uses it). Headers are validated before any
// tensor is made: offsets inside the file, no two tensors overlapping, sizes consistent
// with dtype and shape. A truncated, oversized or lying file is a UserError naming the
// file and, where it applies, the tensor — never a crash or an out-of-bounds read.
// Writing goes to "<path>.tmp", is flushed, then renamed over `path`.
// Thread-safety: functions are independent; a WeightSet is immutable after loading.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace fluxpipe::io {

struct WeightSet {
  std::map<std::string, Tensor> tensors;   // by name as stored in the file(s)
  nlohmann::json metadata = nlohmann::json::object();   // safetensors __metadata__ / GGUF key-values
  std::vector<std::string> files;          // what was read, for messages

  // The named tensor, or UserError "[weights] <files>: no tensor 'name'".
  const Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
  // The named tensor, which must have `shape`: UserError "[who] tensor 'name' is F32[..], expected shape [..]".
  const Tensor& expect(const std::string& name, const Shape& shape, const char* who) const;
  // How many of prefix + "0" + suffix, prefix + "1" + suffix, ... exist (blocks, layers, levels).
  int count_numbered(const std::string& prefix, const std::string& suffix) const;
};

// A read-only whole-file mapping as Storage. Throws UserError naming the path.
std::shared_ptr<Storage> map_file(const std::string& path);

// Drops the resident pages of the file-mapped tensors of `w` (madvise MADV_DONTNEED over each
// tensor's whole pages): the process's resident memory shrinks by what they held, the tensors
// stay valid, and the next read pages them back in from the file (from the page cache when the
// system kept it). Tensors in process memory (e.g. diffusers' stacked q/k/v) are left alone.
// Returns the bytes advised.
size_t release_resident_pages(const WeightSet& w);
// Bytes of all tensors in `w`.
size_t total_bytes(const WeightSet& w);

// Parses a safetensors image held in `file` (a mapping or any memory); `label` names it in errors.
WeightSet parse_safetensors(const std::shared_ptr<Storage>& file, const std::string& label);
WeightSet load_safetensors(const std::string& path);
// A diffusers "*.safetensors.index.json": every shard it names, merged; each tensor must be
// in the shard the index says.
WeightSet load_safetensors_index(const std::string& index_path);

WeightSet parse_gguf(const std::shared_ptr<Storage>& file, const std::string& label);
WeightSet load_gguf(const std::string& path);

// By extension / contents: *.gguf, *.safetensors, *.index.json, or a folder holding exactly
// one *.safetensors.index.json or *.safetensors file.
WeightSet load_weights(const std::string& path);

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// REQUIRES: dense (non-block) dtypes; string metadata values only.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// Metadata values: JSON strings, integers (written as INT64... or UINT32 for
// general.alignment), floats, booleans, and arrays of those.
void write_gguf(const std::string& path, const NamedTensors& tensors, const nlohmann::json& metadata = nlohmann::json::object(),
                uint32_t alignment = 32);

}  // namespace fluxpipe::io
