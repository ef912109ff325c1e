// POST /v1/images/generations: an OpenAI-style front door to the same queue, for clients
// written against that API. It waits for the images (up to --openai-wait, holding no thread)
// and answers {"created", "data": [{"url"} | {"b64_json"}]}; every error, whatever its status,
// is OpenAI's object {"error": {"message", "type", "param", "code"}}.
// Fields: prompt (required), n (1..4; absent or null: 1), size ("WxH" or "auto" = the server's
// default size), response_format ("url" | "b64_json"; default "url", "b64_json" for gpt-image
// models, which return nothing else), output_format ("png" only: our images are PNG), and our
// extras seed, num_inference_steps, negative_prompt. Unknown fields (quality, style, user, ...) are
// ignored.
#include "core/error.h"
#include "server/api_server_impl.h"
#include "server/crypto.h"
#include "server/log.h"

namespace fluxpipe::server {

using nlohmann::json;

void openai_error(http::Response& res, int status, const std::string& message, const char* type,
                  const std::string& code, const std::string& param) {
  json err = {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code.empty() ? json(nullptr) : json(code)}};
  send_json(res, status, {{"error", err}});
}

namespace {

// The v3 request the OpenAI body stands for, or an OpenAI error in `res`.
struct Translated {
  json v3;
  std::string format;   // "url" | "b64_json"
};

std::optional<Translated> translate(const json& body, const RequestLimits& limits, http::Response& res) {
  auto bad = [&res](const std::string& param, const std::string& message) {
    openai_error(res, 400, message, "invalid_request_error", "invalid_value", param);
    return std::nullopt;
  };
  auto present = [&body](const char* f) { return body.contains(f) && !body[f].is_null(); };
  Translated t;
  t.v3 = json::object();
  for (const char* f : {"prompt", "negative_prompt", "seed", "num_inference_steps"}) {
    if (body.contains(f)) t.v3[f] = body[f];
  }
  t.v3["samples"] = present("n") ? body["n"] : json(1);
  std::string size = "auto";
  if (present("size")) {
    if (!body["size"].is_string()) return bad("size", "'size' must be a string like \"1024x1024\" or \"auto\"");
    size = body["size"].get<std::string>();
  }
  if (size == "auto") {
    t.v3["width"] = limits.default_side;
    t.v3["height"] = limits.default_side;
  } else {
    size_t x = size.find('x');
    auto digits = [](const std::string& s) { return !s.empty() && s.size() <= 5 && s.find_first_not_of("0123456789") == std::string::npos; };
    if (x == std::string::npos || !digits(size.substr(0, x)) || !digits(size.substr(x + 1))) {
      return bad("size", "'size' must be \"WIDTHxHEIGHT\" or \"auto\", got \"" + size + "\"");
    }
    t.v3["width"] = std::stoi(size.substr(0, x));
    t.v3["height"] = std::stoi(size.substr(x + 1));
  }
  std::string model = body.contains("model") && body["model"].is_string() ? body["model"].get<std::string>() : "";
  t.format = model.rfind("gpt-image", 0) == 0 ? "b64_json" : "url";
  if (present("response_format")) {
    if (!body["response_format"].is_string()) return bad("response_format", "'response_format' must be \"url\" or \"b64_json\"");
    t.format = body["response_format"].get<std::string>();
    if (t.format != "url" && t.format != "b64_json") {
      return bad("response_format", "'response_format' must be \"url\" or \"b64_json\", got \"" + t.format + "\"");
    }
  }
  if (present("output_format")) {
    if (!body["output_format"].is_string() || body["output_format"] != "png") {
      return bad("output_format", "'output_format': this server makes PNG images only (\"png\")");
    }
  }
  t.v3["direct_link"] = true;
  return t;
}

}  // namespace

void ApiServer::Impl::handle_openai(const http::Request& req, http::Reply reply) {
  std::optional<RequestRecord> r;
  std::string format;
  http::Response res = guarded(metrics, "openai", [&](http::Response& out) {
    std::string key_id = authenticate(req, out);
    if (key_id.empty()) {
      openai_error(out, 401, "invalid or missing API key", "invalid_request_error", "invalid_api_key");
      return;
    }
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      openai_error(out, 400, "the body must be a JSON object", "invalid_request_error", "invalid_json");
      return;
    }
    std::optional<Translated> t = translate(body, options.limits, out);
    if (!t) return;
    format = t->format;
    GenerateRequest p;
    try {
      p = parse_generate_request(t->v3.dump(), options.limits);
    } catch (const UserError& e) {
      std::string m = e.what(), param;
      for (auto [from, to] : {std::pair{"'samples'", "n"}, {"'width'", "size"}, {"'height'", "size"},
                              {"'prompt'", "prompt"}, {"'seed'", "seed"}, {"'num_inference_steps'", "num_inference_steps"},
                              {"'negative_prompt'", "negative_prompt"}}) {
        if (size_t at = m.find(from); at != std::string::npos) {
          m.replace(at, std::string(from).size(), "'" + std::string(to) + "'");
          param = to;
          break;
        }
      }
      openai_error(out, 400, m, "invalid_request_error", "invalid_value", param);
      return;
    }
    r = enqueue(p, key_id, out);
    if (!r) {
      json v3_answer = json::parse(out.body, nullptr, false);
      std::string message = v3_answer.is_object() ? v3_answer.value("error", std::string("unavailable")) : "unavailable";
      openai_error(out, out.status, message, out.status == 429 ? "rate_limit_error" : "server_error",
                   out.status == 429 ? "rate_limit_exceeded" : "unavailable");
    }
  });
  if (!r) {
    // A guarded() failure arrives in the v3 shape: reshape it.
    json j = json::parse(res.body, nullptr, false);
    if (j.is_object() && j.contains("status") && j.contains("error") && j["error"].is_string()) {
      openai_error(res, res.status, j["error"].get<std::string>(), res.status >= 500 ? "server_error" : "invalid_request_error",
                   "");
    }
    reply.send(std::move(res));
    return;
  }
  std::string id = r->id;
  when_finished(id, options.openai_wait_ms, [this, reply, id, format](bool) {
    http::Response out;
    try {
      std::optional<RequestRecord> now = store->get_request(id);
      if (!now || now->state != JobState::succeeded) {
        bool pending = now && !is_final(now->state);
        std::string why = pending ? "not finished within " + std::to_string(options.openai_wait_ms / 1000) +
                                        " s (or the server is stopping); poll GET /generate/v3/status/" + id
                                  : (now ? now->error : std::string("request lost"));
        openai_error(out, pending ? 504 : 500, why, "server_error", pending ? "timeout" : "generation_failed");
        json j = json::parse(out.body);
        j["id"] = id;
        out.body = j.dump();
      } else {
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
        send_json(out, 200, {{"created", now->finished_ms / 1000}, {"data", data}, {"id", now->id}, {"seeds", now->seeds}});
      }
    } catch (const std::exception& e) {
      metrics.count_error("internal");
      log("error", std::string("openai: ") + e.what());
      openai_error(out, 500, "internal error (logged on the server)", "server_error", "");
    }
    reply.send(std::move(out));
  });
}

}  // namespace fluxpipe::server
