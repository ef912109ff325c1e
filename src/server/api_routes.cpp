// The HTTP handlers of the generate v3 API. Handlers never throw: `guarded` maps
// UserError to 400 and everything else to 500 (our fault); the HTTP layer counts every answer.
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

std::string presented_key(const http::Request& req) {
  for (const char* name : {"API-Key", "X-API-Key"}) {
    if (req.has_header(name)) return req.header(name);
  }
  std::string auth = req.header("Authorization");
  if (lower(auth.substr(0, 7)) == "bearer ") {
    std::string key = auth.substr(7);
    while (!key.empty() && key.front() == ' ') key.erase(0, 1);
    return key;
  }
  return {};
}

}  // namespace

std::string ApiServer::Impl::authenticate(const http::Request& req, http::Response& res) {
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
                                                            http::Response& res) {
  std::optional<RequestRecord> r = store->get_request(id);
  if (!r) {
    // Deleted by retention: 410 for its owner; another key learns nothing, as for any id.
    std::optional<ExpiredRecord> gone = store->get_expired(id);
    if (gone && constant_time_equal(gone->key_id, key_id) && answer_if_expired(gone, res)) return std::nullopt;
  }
  // Another key's request answers exactly as an unknown one, so ids cannot be probed.
  if (!r || !constant_time_equal(r->key_id, key_id)) {
    send_failure(res, 404, "no request with id '" + id + "'");
    return std::nullopt;
  }
  return r;
}

namespace {

std::string retention_text(int64_t ms) {
  if (ms % 86400000 == 0) return std::to_string(ms / 86400000) + (ms == 86400000 ? " day" : " days");
  if (ms % 3600000 == 0) return std::to_string(ms / 3600000) + " h";
  return std::to_string(ms / 1000) + " s";
}

}  // namespace

bool ApiServer::Impl::answer_if_expired(const std::optional<ExpiredRecord>& gone, http::Response& res) {
  if (!gone) return false;
  send_failure(res, 410, "this request and its images were deleted after the server's retention period (" +
                             retention_text(options.retention_ms) + ")");
  return true;
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
    int64_t ahead = store->count_ahead(r.seq, r.server_id);
    j["queue_position"] = ahead;
    double mean = runner ? runner->mean_job_seconds() : 0.0;
    if (mean > 0) j["eta_seconds"] = std::round(mean * static_cast<double>(ahead + 1) * 10) / 10;
    if (!pool_has_worker(r.server_id)) {
      j["waiting_for"] = r.server_id.empty() || r.server_id == "any"
                             ? std::string("no worker is running; the request waits for one")
                             : "no worker of pool '" + r.server_id + "' is running; the request waits for one";
    }
  } else if (r.state == JobState::running) {
    // This node's runner knows the latest step; another node's heartbeat wrote it to the store.
    std::optional<JobProgress> pr = runner ? runner->progress(r.id) : std::nullopt;
    if (!pr && r.progress_total > 0) pr = JobProgress{r.progress_done, r.progress_total, r.started_ms};
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
                                                      http::Response& res, const std::optional<IdempotencyKey>& idem) {
  if (!p.server_id.empty() && !pool_known(p.server_id)) {
    throw UserError("[request] field 'server_id': unknown server '" + p.server_id + "'");
  }
  if (!p.webhook.empty()) {
    if (options.allow_private_webhooks) {
      parse_http_url(p.webhook, "webhook");
    } else {
      check_webhook_target(p.webhook, "webhook");
    }
  }
  if (!engine && options.role != "api") {
    send_failure(res, 503, "no model is loaded on this server: start it with `fluxpipe serve --model PATH`");
    return std::nullopt;
  }
  // A job the engine's memory budget cannot hold is refused now, not found out by a crash. (An
  // api node has no engine: its workers fail such a job with the same reason.)
  if (engine) {
    JobFit fit = engine->check_fit(job_of(p, std::vector<int64_t>(static_cast<size_t>(p.samples), 0)));
    if (!fit.fits) throw UserError("[request] the request does not fit this server's memory: " + fit.reason);
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
  // One key cannot take the whole queue (the claim order is fair across keys as well).
  int64_t own = store->count_active_for_key(key_id);
  if (own >= options.max_queued_per_key) {
    res.set_header("Retry-After", std::to_string(retry_after_seconds(own)));
    send_failure(res, 429, "this key has " + std::to_string(own) + " requests queued or running, the most one key may have (" +
                               std::to_string(options.max_queued_per_key) + "); try again when some have finished");
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
    r.seeds.push_back(seed_of_image(p.seed, i));
    r.file_names.push_back((p.file_prefix.empty() ? "" : p.file_prefix + "-") + r.id.substr(0, 8) + "-" +
                           std::to_string(i) + ".png");
  }
  r.params_json = to_json(p).dump();
  r.server_id = p.server_id;
  r.batch_id = p.batch_id;
  r.webhook = p.webhook;
  r.created_ms = wall_ms();
  // Its event wakes this node's runner, or a worker of the pool.
  if (!idem) {
    store->insert_request(r);
    return r;
  }
  switch (store->insert_request_once(r, *idem)) {
    case IdempotentInsert::inserted:
      return r;
    case IdempotentInsert::existing:
      // The same key and body again (a retry after a lost answer): the earlier request.
      if (std::optional<RequestRecord> earlier = store->get_request(r.id)) return earlier;
      send_failure(res, 410, "the request this Idempotency-Key names was deleted after the retention period");
      return std::nullopt;
    case IdempotentInsert::conflict:
      break;
  }
  send_failure(res, 409, "Idempotency-Key '" + idem->key + "' was used with a different request body in the last 24 h");
  return std::nullopt;
}

void ApiServer::Impl::when_finished(const std::string& id, int64_t timeout_ms, std::function<void(bool)> then) {
  waiters.add(id, timeout_ms, std::move(then));
  // The job may have ended before the waiter was added: look once more.
  std::optional<RequestRecord> now = store->get_request(id);
  if (!now || is_final(now->state)) waiters.notify(id);
}

void ApiServer::Impl::handle_submit(const http::Request& req, http::Reply reply) {
  std::optional<RequestRecord> r;
  http::Response res = guarded(metrics, "submit", [&](http::Response& out) {
    std::string key_id = authenticate(req, out);
    if (key_id.empty()) return;
    std::optional<IdempotencyKey> idem;
    if (req.has_header("Idempotency-Key")) {
      std::string k = req.header("Idempotency-Key");
      bool printable = !k.empty() && k.size() <= 255 &&
                       std::all_of(k.begin(), k.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
      if (!printable) throw UserError("[request] header 'Idempotency-Key': 1 to 255 printable ASCII characters");
      idem = IdempotencyKey{k, sha256_hex(req.body), wall_ms() - kIdempotencyWindowMs};
    }
    r = enqueue(parse_generate_request(req.body, options.limits), key_id, out, idem);
    if (r) send_json(out, 200, status_json(*r));
  });
  // `Prefer: respond-async` (RFC 7240) asks for the PENDING answer at once, for clients that
  // poll and show progress from the first second (the playground does).
  bool respond_async = req.header("Prefer").find("respond-async") != std::string::npos;
  if (!r || options.sync_wait_ms <= 0 || respond_async) {
    if (r && respond_async) res.set_header("Preference-Applied", "respond-async");
    reply.send(std::move(res));
    return;
  }
  // Wait for the job without holding a thread; answer with whatever state it reached.
  std::string id = r->id;
  RequestRecord first = *r;
  when_finished(id, options.sync_wait_ms, [this, reply, id, first](bool) {
    reply.send(guarded(metrics, "submit", [&](http::Response& out) {
      std::optional<RequestRecord> now = store->get_request(id);
      send_json(out, 200, status_json(now ? *now : first));
    }));
  });
}

void ApiServer::Impl::handle_status(const http::Request& req, http::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  if (std::optional<RequestRecord> r = owned_request(req.matches.at(1), key_id, res)) send_json(res, 200, status_json(*r));
}

void ApiServer::Impl::handle_cancel(const http::Request& req, http::Reply reply) {
  // The cancel is recorded in the store, so the runner sees it whether the job is queued,
  // being claimed right now, or running (it checks at every step).
  std::optional<RequestRecord> r;
  CancelOutcome outcome = CancelOutcome::not_found;
  auto answer = [this](const RequestRecord& rec, CancelOutcome how) {
    return guarded(metrics, "cancel", [&](http::Response& out) {
      std::optional<RequestRecord> now = store->get_request(rec.id);
      const RequestRecord& cur = now ? *now : rec;
      json j = status_json(cur);
      std::string word = how == CancelOutcome::cancelled         ? "cancelled"
                         : how == CancelOutcome::already_final   ? "already_finished"
                         : cur.state == JobState::cancelled      ? "cancelled"
                         : is_final(cur.state)                   ? "already_finished"
                                                                 : "cancel_requested";
      j["cancel"] = word;
      send_json(out, 200, j);
    });
  };
  http::Response res = guarded(metrics, "cancel", [&](http::Response& out) {
    std::string key_id = authenticate(req, out);
    if (key_id.empty()) return;
    r = owned_request(req.matches.at(1), key_id, out);
    if (!r) return;
    outcome = store->request_cancel(r->id, wall_ms());
    if (outcome == CancelOutcome::cancelled) {
      waiters.notify(r->id);
      outbox->wake();
    }
  });
  if (!r) {
    reply.send(std::move(res));
    return;
  }
  if (outcome != CancelOutcome::requested) {
    reply.send(answer(*r, outcome));
    return;
  }
  // Running: the engine stops at its next step boundary; wait briefly so the answer is final.
  RequestRecord rec = *r;
  when_finished(rec.id, 5000, [reply, rec, answer](bool) { reply.send(answer(rec, CancelOutcome::requested)); });
}

void ApiServer::Impl::handle_batch(const http::Request& req, http::Response& res) {
  std::string key_id = authenticate(req, res);
  if (key_id.empty()) return;
  std::string batch_id = req.matches.at(1);
  json list = json::array();
  for (const RequestRecord& r : store->list_batch(key_id, batch_id)) list.push_back(status_json(r));
  send_json(res, 200, {{"batch_id", batch_id}, {"count", list.size()}, {"requests", list}});
}

void ApiServer::Impl::handle_image(const http::Request& req, http::Response& res) {
  std::string token = req.matches.at(1);
  std::string name = req.matches.at(2);
  std::optional<RequestRecord> r = store->get_request_by_token(token);
  if (!r && answer_if_expired(store->get_expired_by_token(token), res)) return;   // the token is the capability
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
    res.set_header("Retry-After", std::to_string(retry_after_seconds(r->state == JobState::queued ? store->count_ahead(r->seq, r->server_id) : 0)));
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
  res.content_type = "image/png";
  res.body = std::move(*bytes);
}

void ApiServer::Impl::handle_readyz(const http::Request&, http::Response& res) {
  bool store_ok = store->ping();
  if (options.role == "api" && store_ok) {
    send_json(res, 200, {{"ready", true}, {"role", "api"}});
  } else if (engine && store_ok) {
    send_json(res, 200, {{"ready", true}, {"role", options.role}, {"model", engine->model_name()}});
  } else {
    send_json(res, 503, {{"ready", false}, {"reason", !store_ok ? "the store does not answer" : "no model loaded"}});
  }
}

http::Response guarded(Metrics& metrics, const char* route, const std::function<void(http::Response&)>& body) {
  http::Response res;
  try {
    body(res);
  } catch (const UserError& e) {
    send_failure(res, 400, e.what());
  } catch (const StoreUnavailable& e) {
    metrics.count_error("store_unavailable");
    log("error", std::string(route) + ": " + e.what());
    res = http::Response{};
    res.set_header("Retry-After", "2");
    send_failure(res, 503, "the server's database cannot be reached; requests already accepted are kept; try again");
  } catch (const IoError& e) {
    metrics.count_error("io");
    log("error", std::string(route) + ": " + e.what());
    send_failure(res, 503, "storage error on the server; try again");
  } catch (const std::exception& e) {
    metrics.count_error("internal");
    log("error", std::string(route) + ": " + e.what());
    send_failure(res, 500, "internal error (logged on the server)");
  }
  return res;
}

http::Response ApiServer::Impl::unrouted(int status, const http::Request& req, const std::string& why) {
  http::Response res;
  if (req.path.rfind("/v1/", 0) == 0) {
    openai_error(res, status, why, status >= 500 ? "server_error" : "invalid_request_error", "");
  } else {
    send_failure(res, status, why);
  }
  if (status == 405) res.set_header("Allow", "GET, POST, DELETE");
  if (status == 503 || status == 429) res.set_header("Retry-After", "1");
  return res;
}

std::vector<http::Route> ApiServer::Impl::routes() {
  using Sync = void (ApiServer::Impl::*)(const http::Request&, http::Response&);
  using Async = void (ApiServer::Impl::*)(const http::Request&, http::Reply);
  std::vector<http::Route> table;
  auto sync = [this, &table](const char* name, const char* method, std::string pattern, auto handler) {
    route_names.push_back(name);
    table.push_back({method, std::move(pattern), nullptr, [this, name, handler](http::Request& req, http::Reply reply) {
                       reply.send(guarded(metrics, name, [&](http::Response& res) { handler(req, res); }));
                     },
                     {}});
  };
  auto member = [this](Sync h) { return [this, h](const http::Request& req, http::Response& res) { (this->*h)(req, res); }; };
  auto async = [this, &table](const char* name, const char* method, std::string pattern, Async h) {
    route_names.push_back(name);
    table.push_back({method, std::move(pattern), nullptr,
                     [this, h](http::Request& req, http::Reply reply) { (this->*h)(req, std::move(reply)); }, {}});
  };
  // Keyed routes judge the key on the headers alone: a client without a valid key never gets
  // its body read.
  auto keyed = [this](http::Route& r, bool openai_shape) {
    r.admit = [this, openai_shape](const http::Request& req) -> std::optional<http::Response> {
      bool ok = false;
      http::Response res = guarded(metrics, "auth", [&](http::Response& out) { ok = !authenticate(req, out).empty(); });
      if (ok) return std::nullopt;
      if (openai_shape && res.status != 401) {
        std::string message = json::parse(res.body, nullptr, false).value("error", std::string("server error"));
        openai_error(res, res.status, message, "server_error", "");
      } else if (openai_shape) {
        std::string message = json::parse(res.body, nullptr, false).value("error", std::string("invalid API key"));
        openai_error(res, 401, message, "invalid_request_error", "invalid_api_key");
      }
      return res;
    };
  };
  auto health = [&] {
    sync("healthz", "GET", "/healthz", [](const http::Request&, http::Response& res) { send_json(res, 200, {{"status", "ok"}}); });
    sync("readyz", "GET", "/readyz", member(&Impl::handle_readyz));
    sync("metrics", "GET", "/metrics", [this](const http::Request&, http::Response& res) {
      res.content_type = "text/plain; version=0.0.4; charset=utf-8";
      res.body = metrics.render();
    });
  };
  if (options.role == "worker") {   // a worker answers no client: only its health
    health();
    return table;
  }
  const char* id = "([0-9a-zA-Z_-]{1,64})";
  async("submit", "POST", "/generate/v3", &Impl::handle_submit);
  keyed(table.back(), false);
  sync("status", "GET", std::string("/generate/v3/status/") + id, member(&Impl::handle_status));
  async("cancel", "DELETE", std::string("/generate/v3/status/") + id, &Impl::handle_cancel);
  keyed(table.back(), false);
  sync("batch", "GET", "/generate/v3/batch/([^/]{1,128})", member(&Impl::handle_batch));
  sync("image", "GET", "/v3/images/([0-9a-f]{32})/([A-Za-z0-9._-]{1,128})", member(&Impl::handle_image));
  async("openai", "POST", "/v1/images/generations", &Impl::handle_openai);
  keyed(table.back(), true);
  health();
  sync("openapi", "GET", "/openapi.json", [](const http::Request&, http::Response& res) { res.body = openapi_document(); });
  sync("playground", "GET", "/", [](const http::Request&, http::Response& res) {
    res.content_type = "text/html; charset=utf-8";
    res.body = playground_page();
  });
  for (const char* icon : {"/favicon.svg", "/favicon.ico"}) {
    sync("favicon", "GET", icon, [](const http::Request&, http::Response& res) {
      res.content_type = "image/svg+xml";
      res.set_header("Cache-Control", "public, max-age=86400");
      res.body = favicon_svg();
    });
  }
  return table;
}

}  // namespace fluxpipe::server
