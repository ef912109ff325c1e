// fluxpipe tokenizer: the two tokenizers FLUX.1 conditions on.
//
// ClipTokenizer: byte-level BPE from HF's vocab.json + merges.txt, with the text clean-up of
// HF's CLIPTokenizer when ftfy is installed (the variant the goldens' `ids` follow; what we
// reproduce of ftfy is listed in clip_tokenizer.cpp), lower-casing, CLIP's split pattern,
// <|startoftext|> ... <|endoftext|>, truncation to keep both, padding with <|endoftext|>.
// T5Tokenizer: SentencePiece (Debian's libsentencepiece) from spiece.model; </s> appended,
// truncation to max_length - 1 pieces, padding with <pad> = 0. No BOS.
// Thread-safety: encode() is const and thread-safe after construction.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace fluxpipe::tokenizer {

// Where fluxpipe's own copies of the tokenizer files live: $FLUXPIPE_TOKENIZERS, else
// share/tokenizers beside the folder of the executable (the source tree's, for a build in build/).
// Subfolders: clip/ (vocab.json, merges.txt), t5-v1_1-xxl/ (spiece.model).
std::string shipped_tokenizer_dir();

struct Encoding {
  std::vector<int64_t> ids;   // exactly max_length
  int n_tokens = 0;           // before padding (special tokens included)
  bool truncated = false;     // the text did not fit
};

class ClipTokenizer {
 public:
  // `dir` holds vocab.json and merges.txt. Throws UserError naming a missing or malformed file.
  explicit ClipTokenizer(const std::string& dir);
  Encoding encode(const std::string& text, int max_length = 77) const;
  // The BPE pieces of already cleaned text, for tests.
  std::vector<int64_t> bpe_ids(const std::string& cleaned) const;

  static std::string clean(const std::string& text);   // ftfy-like fixes, whitespace, lower case

 private:
  std::vector<std::string> bpe(const std::string& word) const;
  std::unordered_map<std::string, int64_t> vocab_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
  std::string byte_to_unicode_[256];
  int64_t bos_ = 49406, eos_ = 49407;
};

class T5Tokenizer {
 public:
  explicit T5Tokenizer(const std::string& spiece_model);
  ~T5Tokenizer();
  Encoding encode(const std::string& text, int max_length = 256) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fluxpipe::tokenizer
