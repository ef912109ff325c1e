#include "server/request.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace fluxpipe::server {
namespace {

using nlohmann::json;

[[noreturn]] void bad_field(const std::string& field, const std::string& why) {
  throw UserError("[request] field '" + field + "': " + why);
}

std::string type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

// A present, non-null field, or nullptr.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string get_string(const json& body, const char* name, size_t max_len) {
  const json* v = field(body, name);
  if (!v) return {};
  if (!v->is_string()) bad_field(name, "expected a string, got " + type_name(*v));
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > max_len) {
    bad_field(name, "is " + std::to_string(s.size()) + " bytes long, the maximum is " + std::to_string(max_len));
  }
  return s;
}

int64_t get_int(const json& body, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number_integer()) bad_field(name, "expected an integer, got " + type_name(*v));
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
    bad_field(name, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  }
  int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) {
    bad_field(name, "is " + std::to_string(x) + ", must be between " + std::to_string(lo) + " and " +
                        std::to_string(hi));
  }
  return x;
}

bool get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return false;
  if (!v->is_boolean()) bad_field(name, "expected a boolean, got " + type_name(*v));
  return v->get<bool>();
}

bool is_blank(const std::string& s) {
  for (char c : s) {
    if (!(c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v')) return false;
  }
  return true;
}

// Counts UTF-8 code points; a prompt that is not valid UTF-8 cannot reach the JSON
// parser (nlohmann rejects it), so counting lead bytes is exact here.
size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

int round_to_16(int side) { return ((side + 8) / 16) * 16; }

GenerateRequest parse_generate_request(std::string_view body_text, const RequestLimits& limits) {
  json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) throw UserError("[request] body is not valid JSON");
  if (!body.is_object()) throw UserError("[request] body must be a JSON object, got " + type_name(body));

  GenerateRequest r;
  // Byte cap well above any legal prompt so that the code-point count below is cheap.
  const size_t prompt_bytes = static_cast<size_t>(limits.max_prompt_chars) * 4;
  r.prompt = get_string(body, "prompt", prompt_bytes);
  if (!field(body, "prompt")) bad_field("prompt", "is required");
  if (is_blank(r.prompt)) bad_field("prompt", "must not be empty");
  if (utf8_length(r.prompt) > static_cast<size_t>(limits.max_prompt_chars)) {
    bad_field("prompt", "has " + std::to_string(utf8_length(r.prompt)) + " characters, the maximum is " +
                            std::to_string(limits.max_prompt_chars));
  }
  r.negative_prompt = get_string(body, "negative_prompt", prompt_bytes);
  if (utf8_length(r.negative_prompt) > static_cast<size_t>(limits.max_prompt_chars)) {
    bad_field("negative_prompt", "has " + std::to_string(utf8_length(r.negative_prompt)) +
                                     " characters, the maximum is " + std::to_string(limits.max_prompt_chars));
  }
  if (is_blank(r.negative_prompt)) r.negative_prompt.clear();

  r.true_cfg_scale = r.negative_prompt.empty() ? 1.0f : limits.default_true_cfg_scale;
  if (const json* v = field(body, "true_cfg_scale")) {
    if (!v->is_number()) bad_field("true_cfg_scale", "expected a number, got " + type_name(*v));
    double x = v->get<double>();
    if (!(x >= 1.0 && x <= 20.0)) bad_field("true_cfg_scale", "must be between 1 and 20");
    r.true_cfg_scale = static_cast<float>(x);
  }

  r.steps = static_cast<int>(get_int(body, "num_inference_steps", limits.default_steps, 1, limits.max_steps));
  r.samples = static_cast<int>(get_int(body, "samples", limits.default_samples, 1, limits.max_samples));
  for (const char* side : {"width", "height"}) {
    int asked = static_cast<int>(get_int(body, side, limits.default_side, limits.min_side, limits.max_side));
    int used = round_to_16(asked);
    if (used > limits.max_side) used -= 16;
    if (used != asked) {
      r.warnings.push_back(std::string(side) + " " + std::to_string(asked) + " was rounded to " +
                           std::to_string(used) + " (FLUX needs multiples of 16)");
    }
    (std::string(side) == "width" ? r.width : r.height) = used;
  }
  // The noise takes a 32-bit seed; image i uses (seed + i) mod 2^32 (docs/api.md).
  r.seed = get_int(body, "seed", -1, -1, kMaxSeed);

  r.direct_link = get_bool(body, "direct_link");
  r.queued_image_urls = get_bool(body, "queued_image_urls");

  r.server_id = get_string(body, "server_id", 128);
  if (r.server_id == "any") r.server_id.clear();
  r.webhook = get_string(body, "webhook", 2048);
  if (!r.webhook.empty() && r.webhook.rfind("http://", 0) != 0 && r.webhook.rfind("https://", 0) != 0) {
    bad_field("webhook", "must be an http:// or https:// URL");
  }
  r.batch_id = get_string(body, "batch_id", 128);
  r.file_prefix = get_string(body, "file_prefix", 64);
  for (char c : r.file_prefix) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) bad_field("file_prefix", "may contain only A-Z a-z 0-9 . _ - (at most 64 characters)");
  }
  if (r.file_prefix == "." || r.file_prefix == "..") bad_field("file_prefix", "must not be '.' or '..'");
  return r;
}

nlohmann::json to_json(const GenerateRequest& r) {
  return json{{"prompt", r.prompt},
              {"negative_prompt", r.negative_prompt},
              {"true_cfg_scale", r.true_cfg_scale},
              {"steps", r.steps},
              {"samples", r.samples},
              {"width", r.width},
              {"height", r.height},
              {"seed", r.seed},
              {"direct_link", r.direct_link},
              {"queued_image_urls", r.queued_image_urls},
              {"server_id", r.server_id},
              {"webhook", r.webhook},
              {"batch_id", r.batch_id},
              {"file_prefix", r.file_prefix},
              {"warnings", r.warnings}};
}

GenerateRequest generate_request_from_json(const nlohmann::json& j) {
  // Rows written by older servers may lack fields added since: each field falls back to the
  // default of a request that did not set it, so adding a field never breaks stored rows.
  // The prompt alone is required.
  GenerateRequest r;
  r.prompt = j.at("prompt").get<std::string>();
  r.negative_prompt = j.value("negative_prompt", r.negative_prompt);
  r.true_cfg_scale = j.value("true_cfg_scale", r.true_cfg_scale);
  r.steps = j.value("steps", r.steps);
  r.samples = j.value("samples", r.samples);
  r.width = j.value("width", r.width);
  r.height = j.value("height", r.height);
  r.seed = j.value("seed", r.seed);
  r.direct_link = j.value("direct_link", r.direct_link);
  r.queued_image_urls = j.value("queued_image_urls", r.queued_image_urls);
  r.server_id = j.value("server_id", r.server_id);
  r.webhook = j.value("webhook", r.webhook);
  r.batch_id = j.value("batch_id", r.batch_id);
  r.file_prefix = j.value("file_prefix", r.file_prefix);
  r.warnings = j.value("warnings", r.warnings);
  return r;
}

GenerateJob job_of(const GenerateRequest& r, std::vector<int64_t> seeds) {
  GenerateJob job;
  job.prompt = r.prompt;
  job.negative_prompt = r.negative_prompt;
  job.true_cfg_scale = r.true_cfg_scale;
  job.width = r.width;
  job.height = r.height;
  job.steps = r.steps;
  job.seeds = std::move(seeds);
  return job;
}

}  // namespace fluxpipe::server
