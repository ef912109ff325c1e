// CLIP's byte-level BPE, as HF's CLIPTokenizer runs it with ftfy installed:
//   text -> ftfy.fix_text -> runs of whitespace to one space, stripped -> lower case ->
//   split by CLIP's pattern -> bytes mapped to printable stand-ins -> BPE merges by rank.
// Of ftfy we reproduce what prompts meet: mojibake repair (UTF-8 read as Latin-1 / Windows-1252),
// HTML entities (only when the text has no '<', as ftfy's "auto" mode), curly quotes to
// straight ones, Latin ligatures and full-width forms to ASCII, NFC. Uncommon ftfy fixes
// (terminal escapes, C1 controls, surrogates) are not reproduced.
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizers.h"

namespace fluxpipe::tokenizer {
namespace {

// ---- UTF-8 <-> code points ------------------------------------------------------------------
std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + static_cast<size_t>(n) > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3F);
    out.push_back(cp);
    i += static_cast<size_t>(n);
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ---- ftfy-like repairs ------------------------------------------------------------------------
// The byte a character stands for when UTF-8 was misread as Windows-1252 / Latin-1, or -1.
int mojibake_byte(char32_t c) {
  if (c >= 0x80 && c <= 0xFF) return static_cast<int>(c);
  static const std::pair<char32_t, int> cp1252[] = {
      {0x20AC, 0x80}, {0x201A, 0x82}, {0x0192, 0x83}, {0x201E, 0x84}, {0x2026, 0x85}, {0x2020, 0x86}, {0x2021, 0x87},
      {0x02C6, 0x88}, {0x2030, 0x89}, {0x0160, 0x8A}, {0x2039, 0x8B}, {0x0152, 0x8C}, {0x017D, 0x8E}, {0x2018, 0x91},
      {0x2019, 0x92}, {0x201C, 0x93}, {0x201D, 0x94}, {0x2022, 0x95}, {0x2013, 0x96}, {0x2014, 0x97}, {0x02DC, 0x98},
      {0x2122, 0x99}, {0x0161, 0x9A}, {0x203A, 0x9B}, {0x0153, 0x9C}, {0x017E, 0x9E}, {0x0178, 0x9F}};
  for (auto [u, b] : cp1252) {
    if (u == c) return b;
  }
  return -1;
}

// Replaces each run of characters whose stand-in bytes form valid multi-byte UTF-8.
std::u32string fix_mojibake(const std::u32string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    int lead = mojibake_byte(s[i]);
    int n = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
    bool ok = n > 0 && i + static_cast<size_t>(n) <= s.size();
    std::string bytes;
    if (ok) {
      bytes += static_cast<char>(lead);
      for (int k = 1; k < n && ok; ++k) {
        int b = mojibake_byte(s[i + static_cast<size_t>(k)]);
        ok = b >= 0x80 && b <= 0xBF;
        bytes += static_cast<char>(b);
      }
    }
    if (ok) {
      std::u32string d = decode_utf8(bytes);
      if (d.size() == 1 && d[0] != 0xFFFD) {
        out += d;
        i += static_cast<size_t>(n);
        continue;
      }
    }
    out.push_back(s[i]);
    ++i;
  }
  return out;
}

std::u32string unescape_html(const std::u32string& s) {
  static const std::map<std::string, char32_t> named = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", 0xA0}, {"copy", 0xA9},
      {"reg", 0xAE}, {"deg", 0xB0}, {"eacute", 0xE9}, {"egrave", 0xE8}, {"ecirc", 0xEA}, {"euml", 0xEB},
      {"aacute", 0xE1}, {"agrave", 0xE0}, {"acirc", 0xE2}, {"auml", 0xE4}, {"aring", 0xE5}, {"ccedil", 0xE7},
      {"iacute", 0xED}, {"iuml", 0xEF}, {"ntilde", 0xF1}, {"oacute", 0xF3}, {"ouml", 0xF6}, {"uacute", 0xFA},
      {"uuml", 0xFC}, {"szlig", 0xDF}, {"Eacute", 0xC9}, {"Auml", 0xC4}, {"Ouml", 0xD6}, {"Uuml", 0xDC},
      {"hellip", 0x2026}, {"mdash", 0x2014}, {"ndash", 0x2013}, {"lsquo", 0x2018}, {"rsquo", 0x2019},
      {"ldquo", 0x201C}, {"rdquo", 0x201D}, {"euro", 0x20AC}, {"times", 0xD7}};
  std::u32string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '&') {
      size_t semi = s.find(U';', i);
      if (semi != std::u32string::npos && semi - i <= 10) {
        std::string name = encode_utf8(s.substr(i + 1, semi - i - 1));
        char32_t cp = 0;
        if (name.size() > 1 && name[0] == '#') {
          try {
            cp = static_cast<char32_t>(name[1] == 'x' || name[1] == 'X' ? std::stoul(name.substr(2), nullptr, 16) : std::stoul(name.substr(1)));
          } catch (const std::exception&) {
            cp = 0;
          }
        } else if (auto it = named.find(name); it != named.end()) {
          cp = it->second;
        }
        if (cp != 0 && cp < 0x110000) {
          out.push_back(cp);
          i = semi;
          continue;
        }
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

char32_t simplify(char32_t c) {
  if ((c >= 0x2018 && c <= 0x201B) || c == 0x02BC) return '\'';
  if (c >= 0x201C && c <= 0x201F) return '"';
  if (c >= 0xFF01 && c <= 0xFF5E) return c - 0xFF01 + 0x21;   // full-width ASCII
  if (c == 0x3000) return ' ';
  return c;
}

std::u32string fix_ligatures(const std::u32string& s) {
  std::u32string out;
  for (char32_t c : s) {
    switch (c) {
      case 0xFB00: out += U"ff"; break;
      case 0xFB01: out += U"fi"; break;
      case 0xFB02: out += U"fl"; break;
      case 0xFB03: out += U"ffi"; break;
      case 0xFB04: out += U"ffl"; break;
      case 0xFB06: out += U"st"; break;
      default: out.push_back(simplify(c));
    }
  }
  return out;
}

// Python's str.isspace (what `\s` matches in re on str).
bool py_space(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_letter(char32_t c) {
  int t = u_charType(static_cast<UChar32>(c));
  return t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER || t == U_MODIFIER_LETTER ||
         t == U_OTHER_LETTER;
}

bool is_number(char32_t c) {
  int t = u_charType(static_cast<UChar32>(c));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

std::string nfc_lower(const std::string& utf8, bool lower) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(utf8);
  if (U_SUCCESS(err)) u = nfc->normalize(u, err);
  if (lower) u.toLower(icu::Locale::getRoot());
  std::string out;
  u.toUTF8String(out);
  return out;
}

// CLIP's split pattern, alternatives tried in order at each position:
// <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
std::vector<std::u32string> split(const std::u32string& s) {
  std::vector<std::u32string> out;
  static const std::u32string specials[] = {U"<|startoftext|>", U"<|endoftext|>"};
  static const std::u32string contractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  size_t i = 0;
  while (i < s.size()) {
    if (py_space(s[i])) {
      ++i;
      continue;
    }
    bool matched = false;
    for (const auto* group : {&specials[0], &contractions[0]}) {
      size_t count = group == &specials[0] ? 2 : 7;
      for (size_t k = 0; k < count && !matched; ++k) {
        const std::u32string& p = group[k];
        if (s.compare(i, p.size(), p) == 0) {
          out.push_back(p);
          i += p.size();
          matched = true;
        }
      }
      if (matched) break;
    }
    if (matched) continue;
    size_t j = i;
    if (is_letter(s[i])) {
      while (j < s.size() && is_letter(s[j])) ++j;
    } else if (is_number(s[i])) {
      j = i + 1;
    } else {
      while (j < s.size() && !py_space(s[j]) && !is_letter(s[j]) && !is_number(s[j])) ++j;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

std::string ClipTokenizer::clean(const std::string& text) {
  std::u32string s = decode_utf8(text);
  s = fix_mojibake(s);
  if (s.find(U'<') == std::u32string::npos) s = unescape_html(s);
  s = fix_ligatures(s);
  s = decode_utf8(nfc_lower(encode_utf8(s), false));
  std::u32string collapsed;
  for (char32_t c : s) {
    if (py_space(c)) {
      if (!collapsed.empty() && collapsed.back() != U' ') collapsed.push_back(U' ');
    } else {
      collapsed.push_back(c);
    }
  }
  while (!collapsed.empty() && collapsed.back() == U' ') collapsed.pop_back();
  return nfc_lower(encode_utf8(collapsed), true);
}

ClipTokenizer::ClipTokenizer(const std::string& dir) {
  std::ifstream vf(dir + "/vocab.json");
  if (!vf) throw UserError("[clip tokenizer] cannot open '" + dir + "/vocab.json'");
  nlohmann::json vocab = nlohmann::json::parse(vf, nullptr, false);
  if (vocab.is_discarded() || !vocab.is_object()) throw UserError("[clip tokenizer] '" + dir + "/vocab.json' is not a JSON object");
  for (auto& [k, v] : vocab.items()) vocab_.emplace(k, v.get<int64_t>());
  std::ifstream mf(dir + "/merges.txt");
  if (!mf) throw UserError("[clip tokenizer] cannot open '" + dir + "/merges.txt'");
  std::string line;
  std::getline(mf, line);   // "#version: ..." header
  // HF's CLIPTokenizer uses the first 49152 - 256 - 2 merges.
  for (int rank = 0; rank < 48894 && std::getline(mf, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t sp = line.find(' ');
    if (sp == std::string::npos) continue;
    ranks_.emplace(std::make_pair(line.substr(0, sp), line.substr(sp + 1)), rank++);
  }
  if (ranks_.empty()) throw UserError("[clip tokenizer] '" + dir + "/merges.txt' has no merges");
  // bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest map to 256 + n.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string s;
    append_utf8(s, printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++));
    byte_to_unicode_[b] = s;
  }
  if (auto it = vocab_.find("<|startoftext|>"); it != vocab_.end()) bos_ = it->second;
  if (auto it = vocab_.find("<|endoftext|>"); it != vocab_.end()) eos_ = it->second;
}

std::vector<std::string> ClipTokenizer::bpe(const std::string& token) const {
  std::vector<std::string> word;
  for (unsigned char b : token) word.push_back(byte_to_unicode_[b]);
  if (word.empty()) return word;
  word.back() += "</w>";
  while (word.size() > 1) {
    int best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks_.find({word[i], word[i + 1]});
      if (it != ranks_.end() && (best < 0 || it->second < best)) {
        best = it->second;
        at = i;
      }
    }
    if (best < 0) break;
    const std::string first = word[at], second = word[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word.swap(merged);
  }
  return word;
}

std::vector<int64_t> ClipTokenizer::bpe_ids(const std::string& cleaned) const {
  std::vector<int64_t> ids;
  for (const std::u32string& piece : split(decode_utf8(cleaned))) {
    std::string utf8 = encode_utf8(piece);
    if (utf8 == "<|startoftext|>" || utf8 == "<|endoftext|>") {
      ids.push_back(utf8 == "<|startoftext|>" ? bos_ : eos_);
      continue;
    }
    for (const std::string& sym : bpe(utf8)) {
      auto it = vocab_.find(sym);
      if (it == vocab_.end()) throw InternalError("[clip tokenizer] BPE symbol '" + sym + "' is not in the vocabulary");
      ids.push_back(it->second);
    }
  }
  return ids;
}

Encoding ClipTokenizer::encode(const std::string& text, int max_length) const {
  if (max_length < 2) throw UserError("[clip tokenizer] max length must be at least 2");
  std::vector<int64_t> body = bpe_ids(clean(text));
  Encoding e;
  e.truncated = static_cast<int>(body.size()) > max_length - 2;
  if (e.truncated) body.resize(static_cast<size_t>(max_length - 2));
  e.ids.push_back(bos_);
  e.ids.insert(e.ids.end(), body.begin(), body.end());
  e.ids.push_back(eos_);
  e.n_tokens = static_cast<int>(e.ids.size());
  e.ids.resize(static_cast<size_t>(max_length), eos_);
  return e;
}

}  // namespace fluxpipe::tokenizer
