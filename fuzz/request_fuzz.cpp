// libFuzzer target: the POST /generate/v3 body parser and validator.
// Any input must end in a parsed request or a UserError — never a crash, a hang, another
// exception type, or a request that does not survive the store's JSON round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "server/request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fluxpipe;
  std::string_view body(reinterpret_cast<const char*>(data), size);
  server::RequestLimits limits;
  try {
    server::GenerateRequest r = server::parse_generate_request(body, limits);
    if (r.prompt.empty() || r.width % 16 || r.height % 16 || r.width < 64 || r.height > limits.max_side ||
        r.steps < 1 || r.steps > limits.max_steps || r.samples < 1 || r.samples > limits.max_samples ||
        r.file_prefix.find('/') != std::string::npos) {
      std::abort();
    }
    if (server::to_json(server::generate_request_from_json(server::to_json(r))) != server::to_json(r)) std::abort();
  } catch (const UserError&) {
  }
  return 0;
}
