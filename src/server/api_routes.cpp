// The HTTP handlers of the generate v3 API. Handlers never throw: `guarded` maps
// UserError to 400 and everything else to 500 (our fault), and counts every answer.
#include <cctype>

#include "core/error.h"
#include "server/api_server_impl.h"
#include "server/crypto.h"
#include "server/log.h"
#include "server/net_guard.h"
#include "server/request.h"

namespace fluxpipe::server {
namespace {

using nlohmann::json;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string presented_key(const httplib::Request& req) {
  for (const char* name : {"API-Key", "X-API-Key"}) {
    if (req.has_header(name)) return req.get_header_value(name);
  }
  std::string auth = req.get_header_value("Authorization");
  if (lower(auth.substr(0, 7)) == "bearer ") {
    std::string key = auth.substr(7);
    while (!key.empty() && key.front() == ' ') key.erase(0, 1);
    return key;
  }
  return {};
}

}  // namespace

std::string ApiServer::Impl::authenticate(const httplib::Request& req, httplib::Response& res) {
  std::string key = presented_key(req);
  if (key.empty()) {
    send_failure(res, 401, "missing API key: send it in the API-Key header (or X-API-Key, or Authorization: Bearer)");
    return {};
  }
  std::optional<std::string> id = keys->authenticate(key);
  if (!id) {
    send_failure(res, 401, "invalid API key");
    return {};
  }
  return *id;
}

std::optional<RequestRecord> ApiServer::Impl::owned_request(const std::string& id, const std::string& key_id,
                                                            httplib::Response& res) {
  std::optional<RequestRecord> r = store->get_request(id);
  // Another key's request answers exactly as an unknown one, so ids cannot be probed.
  if (!r || !constant_time_equal(r->key_id, key_id)) {
    send_failure(res, 404, "no request with id '" + id + "'");
    return std::nullopt;
  }
  return r;
}

std::vector<std::string> ApiServer::Impl::download_urls(const RequestRecord& r, bool direct_link) {
  std::vector<std::string> urls;
  for (size_t i = 0; i < r.file_names.size(); ++i) {
    urls.push_back(base_url + "/v3/images/" + r.download_token + "/" +
                   (direct_link ? r.file_names[i] : std::to_string(i)));
  }
  return urls;
}

int ApiServer::Impl::retry_after_seconds(int64_t jobs_ahead) {
  double mean = runner ? runner->mean_job_seconds() : 0.0;
  double estimate = mean > 0 ? mean * static_cast<double>(jobs_ahead + 1) : 1.0;
  return std::clamp(static_cast<int>(estimate + 0.999), 1, 3600);
}

json ApiServer::Impl::status_json(const RequestRecord& r) {
  GenerateRequest p = generate_request_from_json(json::parse(r.params_json));
  json j;
  switch (r.state) {
    case JobState::queued:
    case JobState::running: j["status"] = "PENDING"; break;
    case JobState::succeeded: j["status"] = "SUCCESS"; break;
    case JobState::failed:
    case JobState::cancelled: j["status"] = "FAILURE"; break;
  }
  j["id"] = r.id;
  j["state"] = to_string(r.state);
  j["seeds"] = r.seeds;
  j["width"] = p.width;
  j["height"] = p.height;
  j["num_inference_steps"] = p.steps;
  j["samples"] = p.samples;
  if (!r.batch_id.empty()) j["batch_id"] = r.batch_id;
  std::vector<std::string> warnings = p.warnings;
  if (!r.warning.empty()) warnings.push_back(r.warning);
  if (!warnings.empty()) j["warnings"] = warnings;
  if (r.state == JobState::queued) {
    int64_t ahead = store->count_ahead(r.seq);
    j["queue_position"] = ahead;
    double mean = runner ? runner->mean_job_seconds() : 0.0;
    if (mean > 0) j["eta_seconds"] = std::round(mean * static_cast<double>(ahead + 1) * 10) / 10;
  } else if (r.state == JobState::running) {
    std::optional<JobProgress> pr = runner ? runner->progress(r.id) : std::nullopt;
    int done = pr ? pr->done : 0;
    int total = pr ? pr->total : p.steps;
    j["progress"] = {{"done", done}, {"total", total}};
    if (pr && done > 0) {
      double elapsed = static_cast<double>(wall_ms() - pr->started_ms) / 1000.0;
      j["eta_seconds"] = std::round(elapsed / done * (total - done) * 10) / 10;
    }
  }
  if (r.state == JobState::succeeded || (!is_final(r.state) && p.queued_image_urls)) {
    j["download_urls"] = download_urls(r, p.direct_link);
  }
  if (r.state == JobState::failed || r.state == JobState::cancelled) j["error"] = r.error;
  return j;
}

std::optional<RequestRecord> ApiServer::Impl::enqueue(GenerateRequest p, const std::string& key_id,
                                                      httplib::Response& res) {
  if (!p.server_id.empty() && !server_ids.count(p.server_id)) {
    throw UserError("[request] field 'server_id': unknown server '" + p.server_id + "'");
  }
  if (!p.webhook.empty()) {
    if (options.allow_private_webhooks) {
      parse_http_url(p.webhook, "webhook");
    } else {
      check_webhook_target(p.webhook, "webhook");
    }
  }
  if (!engine) {
    send_failure(res, 503, "no model is loaded on this server: start it with `fluxpipe serve --model PATH`");
    return std::nullopt;
  }
  if (int wait_s = rate_limiter.take(key_id)) {
    res.set_header("Retry-After", std::to_string(wait_s));
    send_failure(res, 429, "rate limit: at most " + std::to_string(options.rate_limit_per_minute) +
                               " submissions per minute for this key");
    return std::nullopt;
  }
  int64_t active = store->count_active();
  if (active >= options.max_queue) {
    res.set_header("Retry-After", std::to_string(retry_after_seconds(active)));
    send_failure(res, 429, "the queue is full (" + std::to_string(active) + " requests); try again later");
    return std::nullopt;
  }
  if (p.seed < 0) {
    std::vector<uint8_t> b = random_bytes(4);
    p.seed = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
  }
  RequestRecord r;
  r.id = random_hex(16);
  r.key_id = key_id;
  r.download_token = random_hex(16);
  for (int i = 0; i < p.samples; ++i) {
    r.seeds.push_back(p.seed + i);
    r.file_names.push_back((p.file_prefix.empty() ? "" : p.file_prefix + "-") + r.id.substr(0, 8) + "-" +
                           std::to_string(i) + ".png");
  }
  r.params_json = to_json(p).dump();
  r.server_id = p.server_id;
  r.batch_id = p.batch_id;
  r.webhook = p.webhook;
  r.created_ms = wall_ms();
  store->insert_request(r);
  runner->wake();
  return r;
}

void ApiServer::Impl::handle_submit(const httplib::Request& req, httplib::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  std::optional<RequestRecord> r = enqueue(parse_generate_request(req.body, options.limits), key_id, res);
  if (!r) return;
  if (options.sync_wait_ms > 0) runner->wait_finished(r->id, options.sync_wait_ms);
  std::optional<RequestRecord> now = store->get_request(r->id);
  send_json(res, 200, status_json(now ? *now : *r));
}

void ApiServer::Impl::handle_status(const httplib::Request& req, httplib::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  if (std::optional<RequestRecord> r = owned_request(req.matches[1], key_id, res)) send_json(res, 200, status_json(*r));
}

void ApiServer::Impl::handle_cancel(const httplib::Request& req, httplib::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  std::optional<RequestRecord> r = owned_request(req.matches[1], key_id, res);
  if (!r) return;
  std::string outcome;
  if (r->state == JobState::queued && store->cancel_queued(r->id, wall_ms())) {
    if (runner) runner->mark_finished(r->id);
    outbox->wake();
    outcome = "cancelled";
  } else if (runner && runner->request_cancel(r->id)) {
    // The engine stops at its next step boundary; wait briefly so the answer is final.
    outcome = runner->wait_finished(r->id, 5000) ? "cancelled" : "cancel_requested";
  } else {
    outcome = is_final(r->state) ? "already_finished" : "cancel_requested";
  }
  r = store->get_request(r->id);
  json j = status_json(*r);
  if (outcome == "cancelled" && r->state != JobState::cancelled) outcome = "already_finished";
  j["cancel"] = outcome;
  send_json(res, 200, j);
}

void ApiServer::Impl::handle_batch(const httplib::Request& req, httplib::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  std::string batch_id = req.matches[1];
  json list = json::array();
  for (const RequestRecord& r : store->list_batch(key_id, batch_id)) list.push_back(status_json(r));
  send_json(res, 200, {{"batch_id", batch_id}, {"count", list.size()}, {"requests", list}});
}

void ApiServer::Impl::handle_image(const httplib::Request& req, httplib::Response& res) {
  std::string token = req.matches[1];
  std::string name = req.matches[2];
  std::optional<RequestRecord> r = store->get_request_by_token(token);
  size_t index = r ? r->file_names.size() : 0;
  if (r) {
    if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos && name.size() < 3) {
      index = std::stoul(name);
    } else {
      for (size_t i = 0; i < r->file_names.size(); ++i) {
        if (r->file_names[i] == name) index = i;
      }
    }
  }
  if (!r || index >= r->file_names.size()) {
    send_failure(res, 404, "no such image");
    return;
  }
  if (!is_final(r->state)) {
    res.set_header("Retry-After", std::to_string(retry_after_seconds(r->state == JobState::queued ? store->count_ahead(r->seq) : 0)));
    send_json(res, 202, {{"status", "PENDING"}, {"state", to_string(r->state)}});
    return;
  }
  if (r->state != JobState::succeeded) {
    send_failure(res, 404, "the image was not made: " + r->error);
    return;
  }
  std::optional<std::string> bytes = images->read(r->download_token, r->file_names[index]);
  if (!bytes) {
    send_failure(res, 404, "the image file is gone from the server's storage");
    return;
  }
  res.status = 200;
  res.set_header("Cache-Control", "private, max-age=31536000, immutable");
  res.set_header("Content-Disposition", "inline; filename=\"" + r->file_names[index] + "\"");
  res.set_content(std::move(*bytes), "image/png");
}

void ApiServer::Impl::handle_readyz(const httplib::Request&, httplib::Response& res) {
  bool store_ok = store->ping();
  if (engine && store_ok) {
    send_json(res, 200, {{"ready", true}, {"model", engine->model_name()}});
  } else {
    send_json(res, 503, {{"ready", false}, {"reason", !store_ok ? "the store does not answer" : "no model loaded"}});
  }
}

void ApiServer::Impl::install_routes() {
  using Handler = void (ApiServer::Impl::*)(const httplib::Request&, httplib::Response&);
  auto guarded = [this](const char* route, auto handler) {
    return [this, route, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const UserError& e) {
        send_failure(res, 400, e.what());
      } catch (const nlohmann::json::exception& e) {
        metrics.count_error("internal");
        log("error", std::string(route) + ": " + e.what());
        send_failure(res, 500, "internal error (logged on the server)");
      } catch (const IoError& e) {
        metrics.count_error("io");
        log("error", std::string(route) + ": " + e.what());
        send_failure(res, 500, "storage error on the server; try again");
      } catch (const std::exception& e) {
        metrics.count_error("internal");
        log("error", std::string(route) + ": " + e.what());
        send_failure(res, 500, "internal error (logged on the server)");
      }
      metrics.count_http(route, res.status);
    };
  };
  auto member = [this](Handler h) {
    return [this, h](const httplib::Request& req, httplib::Response& res) { (this->*h)(req, res); };
  };
  const char* id = "([0-9a-zA-Z_-]{1,64})";
  http.Post("/generate/v3", guarded("submit", member(&Impl::handle_submit)));
  http.Get(std::string("/generate/v3/status/") + id, guarded("status", member(&Impl::handle_status)));
  http.Delete(std::string("/generate/v3/status/") + id, guarded("cancel", member(&Impl::handle_cancel)));
  http.Get("/generate/v3/batch/([^/]{1,128})", guarded("batch", member(&Impl::handle_batch)));
  http.Get("/v3/images/([0-9a-f]{32})/([A-Za-z0-9._-]{1,128})", guarded("image", member(&Impl::handle_image)));
  http.Post("/v1/images/generations", guarded("openai", member(&Impl::handle_openai)));
  http.Get("/healthz", guarded("healthz", [](const httplib::Request&, httplib::Response& res) {
             send_json(res, 200, {{"status", "ok"}});
           }));
  http.Get("/readyz", guarded("readyz", member(&Impl::handle_readyz)));
  http.Get("/metrics", guarded("metrics", [this](const httplib::Request&, httplib::Response& res) {
             res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
           }));
  http.Get("/openapi.json", guarded("openapi", [](const httplib::Request&, httplib::Response& res) {
             res.set_content(openapi_document(), "application/json");
           }));
  http.Get("/", guarded("playground", [](const httplib::Request&, httplib::Response& res) {
             res.set_content(playground_page(), "text/html; charset=utf-8");
           }));
  // Answers that never reached a handler (unknown path, body over the limit, bad HTTP)
  // still get a JSON body in the API's shape.
  http.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string error = res.status == 413   ? "request body too large (limit " + std::to_string(options.max_body_bytes) + " bytes)"
                        : res.status == 404 ? "no such endpoint"
                                            : "malformed HTTP request";
    send_failure(res, res.status, error);
    metrics.count_http("unrouted", res.status);
  });
}

}  // namespace fluxpipe::server
