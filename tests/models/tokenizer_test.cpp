// Tokenizers against the goldens in ../shared/testdata/text-tiny: CLIP ids as HF's
// CLIPTokenizer with ftfy produces them (`ids`), T5 ids as sentencepiece + HF's T5Tokenizer.
#include <gtest/gtest.h>

#include "golden.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe::testing {
namespace {

TEST(Tokenizers, ClipMatchesHuggingFaceWithFtfy) {
  tokenizer::ClipTokenizer tok(testdata("text-tiny/tokenizer"));
  nlohmann::json golden = read_json(testdata("text-tiny/clip_tokenizer_golden.json"));
  int matched = 0;
  for (size_t i = 0; i < golden.size(); ++i) {
    const auto& g = golden[i];
    tokenizer::Encoding e = tok.encode(g["prompt"].get<std::string>());
    std::vector<int64_t> want = g["ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(e.ids, want) << "entry " << i << ": " << g["prompt"].get<std::string>();
    // Tokens before padding: up to the first end token. (The golden's own `n_tokens` of entry 25
    // counts openai's variant, so it is derived from `ids` here.)
    int n = 0;
    while (n < static_cast<int>(want.size()) && want[static_cast<size_t>(n)] != 49407) ++n;
    EXPECT_EQ(e.n_tokens, n + 1) << "entry " << i;
    matched += e.ids == want;
  }
  EXPECT_EQ(matched, static_cast<int>(golden.size()));
}

TEST(Tokenizers, T5MatchesSentencePieceAndHuggingFace) {
  tokenizer::T5Tokenizer tok(testdata("text-tiny/t5_spm/spiece.model"));
  nlohmann::json golden = read_json(testdata("text-tiny/t5_tokenizer_golden.json"));
  for (size_t i = 0; i < golden.size(); ++i) {
    const auto& g = golden[i];
    tokenizer::Encoding e = tok.encode(g["prompt"].get<std::string>());
    EXPECT_EQ(e.ids, g["ids"].get<std::vector<int64_t>>()) << "entry " << i << ": " << g["prompt"].get<std::string>();
    EXPECT_EQ(e.n_tokens, g["n_tokens"].get<int>()) << "entry " << i;
  }
}

TEST(Tokenizers, TruncationIsReported) {
  tokenizer::T5Tokenizer t5(testdata("t5-v1_1-xxl-tokenizer/spiece.model"));
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "word ";
  tokenizer::Encoding e = t5.encode(long_prompt);
  EXPECT_TRUE(e.truncated);
  EXPECT_EQ(e.ids.size(), 256u);
  EXPECT_EQ(e.ids[255], 1);   // </s> survives
  EXPECT_FALSE(t5.encode("a cat").truncated);
  tokenizer::ClipTokenizer clip(testdata("text-tiny/tokenizer"));
  tokenizer::Encoding c = clip.encode(long_prompt);
  EXPECT_TRUE(c.truncated);
  EXPECT_EQ(c.ids[76], 49407);
  EXPECT_EQ(c.ids[0], 49406);
}

}  // namespace
}  // namespace fluxpipe::testing
