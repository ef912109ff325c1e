// POST /v1/images/generations: an OpenAI-style front door to the same queue, for clients
// written against that API. It waits for the images (up to --openai-wait) and answers
// {"created", "data": [{"url"} | {"b64_json"}]}, errors as {"error": {"message", "type"}}.
// Fields: prompt (required), n (1..4, default 1), size ("WxH", default "1024x1024"),
// response_format ("url" | "b64_json"), and our extras seed, num_inference_steps,
// negative_prompt. Unknown fields (model, quality, style, user) are ignored.
#include "core/error.h"
#include "server/api_server_impl.h"
#include "server/crypto.h"

namespace fluxpipe::server {
namespace {

using nlohmann::json;

void openai_error(httplib::Response& res, int status, const std::string& message, const char* type) {
  send_json(res, status, {{"error", {{"message", message}, {"type", type}}}});
}

}  // namespace

void ApiServer::Impl::handle_openai(const httplib::Request& req, httplib::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    openai_error(res, 400, "body must be a JSON object", "invalid_request_error");
    return;
  }
  // Translate to a v3 request so that every v3 rule applies.
  json v3 = json::object();
  for (const char* f : {"prompt", "negative_prompt", "seed", "num_inference_steps"}) {
    if (body.contains(f)) v3[f] = body[f];
  }
  if (body.contains("n")) v3["samples"] = body["n"];
  else v3["samples"] = 1;
  std::string size = body.value("size", std::string("1024x1024"));
  if (body.contains("size") && !body["size"].is_string()) {
    openai_error(res, 400, "field 'size': expected a string like \"1024x1024\"", "invalid_request_error");
    return;
  }
  size_t x = size.find('x');
  try {
    size_t used_w = 0, used_h = 0;
    int w = std::stoi(size.substr(0, x), &used_w), h = std::stoi(size.substr(x + 1), &used_h);
    if (x == std::string::npos || used_w != x || used_h != size.size() - x - 1) throw std::invalid_argument(size);
    v3["width"] = w;
    v3["height"] = h;
  } catch (const std::exception&) {
    openai_error(res, 400, "field 'size': expected \"WIDTHxHEIGHT\", got \"" + size + "\"", "invalid_request_error");
    return;
  }
  std::string format = body.value("response_format", std::string("url"));
  if (format != "url" && format != "b64_json") {
    openai_error(res, 400, "field 'response_format': must be \"url\" or \"b64_json\"", "invalid_request_error");
    return;
  }
  v3["direct_link"] = true;
  GenerateRequest p;
  try {
    p = parse_generate_request(v3.dump(), options.limits);
  } catch (const UserError& e) {
    std::string m = e.what();
    for (auto [from, to] : {std::pair{"'samples'", "'n'"}, {"'width'", "'size'"}, {"'height'", "'size'"}}) {
      if (size_t at = m.find(from); at != std::string::npos) m.replace(at, std::string(from).size(), to);
    }
    openai_error(res, 400, m, "invalid_request_error");
    return;
  }
  std::optional<RequestRecord> r = enqueue(p, key_id, res);
  if (!r) {
    json v3_answer = json::parse(res.body, nullptr, false);
    openai_error(res, res.status, v3_answer.value("error", std::string("unavailable")), "server_error");
    return;
  }
  runner->wait_finished(r->id, options.openai_wait_ms);
  std::optional<RequestRecord> now = store->get_request(r->id);
  if (!now || now->state != JobState::succeeded) {
    bool pending = now && !is_final(now->state);
    std::string why = pending ? "not finished within " + std::to_string(options.openai_wait_ms / 1000) +
                                    " s; poll GET /generate/v3/status/" + r->id
                              : (now ? now->error : std::string("request lost"));
    send_json(res, pending ? 504 : 500, {{"error", {{"message", why}, {"type", "server_error"}}}, {"id", r->id}});
    return;
  }
  json data = json::array();
  std::vector<std::string> urls = download_urls(*now, true);
  for (size_t i = 0; i < urls.size(); ++i) {
    if (format == "url") {
      data.push_back({{"url", urls[i]}});
    } else {
      std::optional<std::string> bytes = images->read(now->download_token, now->file_names[i]);
      if (!bytes) throw IoError("[openai] image file " + now->file_names[i] + " is missing");
      data.push_back({{"b64_json", base64_encode(std::vector<uint8_t>(bytes->begin(), bytes->end()))}});
    }
  }
  send_json(res, 200, {{"created", now->finished_ms / 1000}, {"data", data}, {"id", now->id}, {"seeds", now->seeds}});
}

}  // namespace fluxpipe::server
