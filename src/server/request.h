// fluxpipe server: the POST /generate/v3 request, parsed strictly into a typed struct.
//
// Rules (docs/api.md is the user-facing version): unknown fields are ignored; a JSON
// null counts as an absent field; a present field of the wrong type or out of range is
// a UserError whose message names the field. Width and height are rounded to the nearest
// multiple of 16 (ties up) and the rounding is reported in `warnings`.
// Pure functions, no I/O: the webhook's address check happens in the server.
// Thread-safety: stateless.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/pipeline.h"

namespace fluxpipe::server {

// Seeds are 0..2^32-1, what the noise generator takes; image i of a request uses
// (seed + i) mod 2^32. The CLI and the server accept the same range.
constexpr int64_t kMaxSeed = 4294967295;
inline int64_t seed_of_image(int64_t seed, int i) { return (seed + i) & kMaxSeed; }

struct RequestLimits {
  int max_prompt_chars = 10000;
  int default_steps = 20;
  int max_steps = 50;
  int default_samples = 2;
  int max_samples = 4;
  int min_side = 64;
  int max_side = 1536;
  int default_side = 1024;
  float default_true_cfg_scale = 4.0f;   // applied only when a negative prompt is given
};

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;
  float true_cfg_scale = 1.0f;
  int steps = 20;
  int samples = 2;
  int width = 1024;            // rounded, what the engine runs
  int height = 1024;
  int64_t seed = -1;           // -1: pick a random one at submission
  bool direct_link = false;
  bool queued_image_urls = false;
  std::string server_id;       // empty: any server
  std::string webhook;         // empty: none
  std::string batch_id;
  std::string file_prefix;
  std::vector<std::string> warnings;
};

// Throws UserError("[request] ...") naming the first bad field.
GenerateRequest parse_generate_request(std::string_view body, const RequestLimits& limits);

// Rounds to the nearest multiple of 16, ties up.
int round_to_16(int side);

// What the engine runs for `r`, one image per seed.
GenerateJob job_of(const GenerateRequest& r, std::vector<int64_t> seeds);

// Lossless round trip for the store.
nlohmann::json to_json(const GenerateRequest& r);
GenerateRequest generate_request_from_json(const nlohmann::json& j);

}  // namespace fluxpipe::server
