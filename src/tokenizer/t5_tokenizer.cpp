#include <sentencepiece_processor.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe::tokenizer {

std::string shipped_tokenizer_dir() {
  if (const char* env = std::getenv("FLUXPIPE_TOKENIZERS")) return env;
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  for (std::filesystem::path dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.root_path(); dir = dir.parent_path()) {
    if (std::filesystem::exists(dir / "share/tokenizers/clip/vocab.json")) return (dir / "share/tokenizers").string();
  }
  return "share/tokenizers";
}

struct T5Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

T5Tokenizer::T5Tokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
  auto status = impl_->sp.Load(path);
  if (!status.ok()) throw UserError("[t5 tokenizer] cannot load '" + path + "': " + status.ToString());
}

T5Tokenizer::~T5Tokenizer() = default;

Encoding T5Tokenizer::encode(const std::string& text, int max_length) const {
  if (max_length < 1) throw UserError("[t5 tokenizer] max length must be at least 1");
  std::vector<int> pieces;
  auto status = impl_->sp.Encode(text, &pieces);
  if (!status.ok()) throw UserError("[t5 tokenizer] cannot encode: " + status.ToString());
  Encoding e;
  e.truncated = static_cast<int>(pieces.size()) > max_length - 1;
  if (e.truncated) pieces.resize(static_cast<size_t>(max_length - 1));
  e.ids.assign(pieces.begin(), pieces.end());
  e.ids.push_back(1);   // </s>
  e.n_tokens = static_cast<int>(e.ids.size());
  e.ids.resize(static_cast<size_t>(max_length), 0);   // <pad>
  return e;
}

}  // namespace fluxpipe::tokenizer
