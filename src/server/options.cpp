#include "server/options.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>

#include "core/error.h"
#include "core/parse.h"

namespace fluxpipe::server {
namespace {

struct Option {
  const char* flag;
  const char* env;
  const char* value_name;   // nullptr: a switch
  const char* help;
  std::function<void(ServeOptions&, const std::string&)> set;
};

int to_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  return static_cast<int>(parse_integer("serve", flag, v, lo, hi));
}

bool to_bool(const std::string& flag, const std::string& v) {
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off" || v.empty()) return false;
  throw UserError("[serve] " + flag + ": '" + v + "' is not a boolean (1/0, true/false)");
}

std::vector<std::string> split_commas(const std::string& v) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= v.size()) {
    size_t comma = v.find(',', start);
    std::string part = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) out.push_back(part);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// "7d", "36h", "90m", "45s", "1500ms" or "0" (never).
int64_t parse_duration_ms(const std::string& flag, const std::string& v) {
  if (v == "0") return 0;
  size_t digits = 0;
  while (digits < v.size() && std::isdigit(static_cast<unsigned char>(v[digits]))) ++digits;
  std::string unit = v.substr(digits);
  int64_t per = unit == "d" ? 86400000 : unit == "h" ? 3600000 : unit == "m" ? 60000 : unit == "s" ? 1000
                : unit == "ms" ? 1 : 0;
  if (digits == 0 || digits > 9 || per == 0) {
    throw UserError("[serve] " + flag + ": '" + v + "' is not a duration (a number with d, h, m, s or ms; 0 = never)");
  }
  return std::stoll(v.substr(0, digits)) * per;
}

std::string read_secret_file(const char* flag, const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) throw UserError(std::string("[serve] ") + flag + ": cannot read '" + path + "'");
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  if (line.empty()) throw UserError(std::string("[serve] ") + flag + ": '" + path + "' is empty");
  return line;
}

const std::vector<Option>& options() {
  static const std::vector<Option> table = {
      {"--listen", "FLUXPIPE_LISTEN", "HOST:PORT", "address to listen on (default 127.0.0.1:8080; port 0 = any)",
       [](ServeOptions& o, const std::string& v) {
         size_t colon = v.rfind(':');
         if (colon == std::string::npos || colon == 0) throw UserError("[serve] --listen: expected HOST:PORT, got '" + v + "'");
         o.listen_host = v.substr(0, colon);
         if (o.listen_host.size() > 2 && o.listen_host.front() == '[') o.listen_host = o.listen_host.substr(1, o.listen_host.size() - 2);
         o.listen_port = to_int("--listen", v.substr(colon + 1), 0, 65535);
       }},
      {"--data", "FLUXPIPE_DATA", "DIR", "data folder: lock, default database and images, webhook secret (required)",
       [](ServeOptions& o, const std::string& v) { o.data_dir = v; }},
      {"--store", "FLUXPIPE_STORE", "URL", "the queue: sqlite:PATH or postgresql://user@host/db (default <data>/fluxpipe.db)",
       [](ServeOptions& o, const std::string& v) { o.store_location = v; }},
      {"--images", "FLUXPIPE_IMAGES", "DIR|s3://BUCKET/PREFIX|postgresql", "where images go: a folder every node shares, an S3 bucket, or the PostgreSQL store itself (default <data>/images)",
       [](ServeOptions& o, const std::string& v) { o.images_dir = v; }},
      {"--s3-endpoint", "FLUXPIPE_S3_ENDPOINT", "URL", "S3-compatible endpoint, e.g. http://minio:9000 (default AWS for AWS_REGION)",
       [](ServeOptions& o, const std::string& v) { o.s3_endpoint = v; }},
      {"--s3-path-style", "FLUXPIPE_S3_PATH_STYLE", nullptr, "address objects as ENDPOINT/BUCKET/KEY (MinIO, s3rver) instead of BUCKET.ENDPOINT/KEY",
       [](ServeOptions& o, const std::string& v) { o.s3_path_style = to_bool("--s3-path-style", v); }},
      {"--role", "FLUXPIPE_ROLE", "all|api|worker", "api: HTTP only, loads no model; worker: runs jobs, serves health only (default all)",
       [](ServeOptions& o, const std::string& v) {
         if (v != "all" && v != "api" && v != "worker") {
           throw UserError("[serve] --role: expected all, api or worker, got '" + v + "'");
         }
         o.role = v;
       }},
      {"--node-id", "FLUXPIPE_NODE_ID", "NAME", "this node's name in claims and logs (default HOST-PID)",
       [](ServeOptions& o, const std::string& v) { o.node_id = v; }},
      {"--max-queued-per-key", "FLUXPIPE_MAX_QUEUED_PER_KEY", "N", "queued+running requests of one key before 429 (default 50)",
       [](ServeOptions& o, const std::string& v) { o.max_queued_per_key = to_int("--max-queued-per-key", v, 1, 1000000); }},
      {"--retention", "FLUXPIPE_RETENTION", "DURATION", "delete ended requests and their images after this: 7d, 36h, 90m, 0 = never (default 7d)",
       [](ServeOptions& o, const std::string& v) { o.retention_ms = parse_duration_ms("--retention", v); }},
      {"--lease-ms", "FLUXPIPE_LEASE_MS", "MS", "a worker's claim not renewed for this long goes to another worker (default 30000)",
       [](ServeOptions& o, const std::string& v) { o.lease_ms = to_int("--lease-ms", v, 1000, 3600000); }},
      {"--model", "FLUXPIPE_MODEL", "PATH|NAME", "model folder or file, or a pulled model's name (see `fluxpipe pull --list`); without it generation answers 503",
       [](ServeOptions& o, const std::string& v) { o.model_path = v; }},
      {"--models", "FLUXPIPE_MODELS", "DIR", "where pulled models live (default ~/.cache/fluxpipe/models)",
       [](ServeOptions& o, const std::string& v) { o.models_dir = v; }},
      {"--pull", "FLUXPIPE_PULL", nullptr, "pull --model NAME at start when it is not pulled yet (otherwise that is an error)",
       [](ServeOptions& o, const std::string& v) { o.pull_model = to_bool("--pull", v); }},
      {"--memory-budget", "FLUXPIPE_MEMORY_BUDGET", "SIZE", "resident memory a job is planned within, e.g. 8G (default: the machine's)",
       [](ServeOptions& o, const std::string& v) { o.engine.memory_budget = parse_bytes("serve", "--memory-budget", v); }},
      {"--vae-tiling", "FLUXPIPE_VAE_TILING", "auto|on|off", "tiled decoding: when a whole decode would not fit (default auto)",
       [](ServeOptions& o, const std::string& v) { o.engine.vae_tiling = parse_tiling("serve", v); }},
      {"--device", "FLUXPIPE_DEVICE", "auto|cpu|cuda|cuda:N", "where jobs compute (default auto: the first CUDA GPU, else the CPU)",
       [](ServeOptions& o, const std::string& v) { o.engine.device = v; }},
      {"--text-cache", "FLUXPIPE_TEXT_CACHE", "N", "prompts whose encoder outputs are kept, so a prompt seen again skips the encoders (default 8; 0 = none)",
       [](ServeOptions& o, const std::string& v) { o.engine.text_cache = static_cast<size_t>(parse_integer("serve", "--text-cache", v, 0, 4096)); }},
      {"--vram-budget", "FLUXPIPE_VRAM_BUDGET", "SIZE", "on a GPU: the device memory a job is planned within (default: what is free at load)",
       [](ServeOptions& o, const std::string& v) { o.engine.vram_budget = parse_bytes("serve", "--vram-budget", v); }},
      {"--public-url", "FLUXPIPE_PUBLIC_URL", "URL", "base of image download URLs (default http://HOST:PORT)",
       [](ServeOptions& o, const std::string& v) {
         o.public_url = v;
         while (!o.public_url.empty() && o.public_url.back() == '/') o.public_url.pop_back();
       }},
      {"--server-id", "FLUXPIPE_SERVER_ID", "ID", "the pool this worker serves: jobs naming it, none or `any` (default local)",
       [](ServeOptions& o, const std::string& v) { o.server_id = v; }},
      {"--known-server-ids", "FLUXPIPE_KNOWN_SERVER_IDS", "A,B", "other pools that requests may name in server_id",
       [](ServeOptions& o, const std::string& v) { o.known_server_ids = split_commas(v); }},
      {"--sync-wait", "FLUXPIPE_SYNC_WAIT_MS", "MS", "how long a submission waits to answer SUCCESS (default 10000)",
       [](ServeOptions& o, const std::string& v) { o.sync_wait_ms = to_int("--sync-wait", v, 0, 600000); }},
      {"--openai-wait", "FLUXPIPE_OPENAI_WAIT_MS", "MS", "how long /v1/images/generations waits for images (default 600000)",
       [](ServeOptions& o, const std::string& v) { o.openai_wait_ms = to_int("--openai-wait", v, 0, 3600000); }},
      {"--max-queue", "FLUXPIPE_MAX_QUEUE", "N", "queued+running requests before 429 (default 100)",
       [](ServeOptions& o, const std::string& v) { o.max_queue = to_int("--max-queue", v, 1, 1000000); }},
      {"--rate-limit", "FLUXPIPE_RATE_LIMIT", "N", "submissions per key per minute, 0 = unlimited (default 60)",
       [](ServeOptions& o, const std::string& v) { o.rate_limit_per_minute = to_int("--rate-limit", v, 0, 1000000); }},
      {"--max-body", "FLUXPIPE_MAX_BODY", "BYTES", "largest request body before 413 (default 65536)",
       [](ServeOptions& o, const std::string& v) { o.max_body_bytes = static_cast<size_t>(to_int("--max-body", v, 1024, 64 << 20)); }},
      {"--max-prompt-chars", "FLUXPIPE_MAX_PROMPT_CHARS", "N", "longest prompt in characters (default 10000)",
       [](ServeOptions& o, const std::string& v) { o.limits.max_prompt_chars = to_int("--max-prompt-chars", v, 1, 1000000); }},
      {"--default-steps", "FLUXPIPE_DEFAULT_STEPS", "N", "num_inference_steps when absent (default 20)",
       [](ServeOptions& o, const std::string& v) { o.limits.default_steps = to_int("--default-steps", v, 1, 1000); }},
      {"--max-steps", "FLUXPIPE_MAX_STEPS", "N", "largest num_inference_steps (default 50)",
       [](ServeOptions& o, const std::string& v) { o.limits.max_steps = to_int("--max-steps", v, 1, 1000); }},
      {"--max-attempts", "FLUXPIPE_MAX_ATTEMPTS", "N", "starts of one job before it fails for good (default 3)",
       [](ServeOptions& o, const std::string& v) { o.max_attempts = to_int("--max-attempts", v, 1, 100); }},
      {"--http-threads", "FLUXPIPE_HTTP_THREADS", "N", "HTTP io threads; connections cost no thread (default 2)",
       [](ServeOptions& o, const std::string& v) { o.http_threads = to_int("--http-threads", v, 1, 256); }},
      {"--max-connections", "FLUXPIPE_MAX_CONNECTIONS", "N", "open connections before new ones get 503 (default 20000)",
       [](ServeOptions& o, const std::string& v) { o.max_connections = to_int("--max-connections", v, 1, 1000000); }},
      {"--max-connections-per-ip", "FLUXPIPE_MAX_CONNECTIONS_PER_IP", "N", "open connections per client address, 0 = off (default 0)",
       [](ServeOptions& o, const std::string& v) { o.max_connections_per_ip = to_int("--max-connections-per-ip", v, 0, 1000000); }},
      {"--max-header", "FLUXPIPE_MAX_HEADER", "BYTES", "largest request header block before 431 (default 16384)",
       [](ServeOptions& o, const std::string& v) { o.max_header_bytes = static_cast<size_t>(to_int("--max-header", v, 1024, 1 << 20)); }},
      {"--idle-timeout", "FLUXPIPE_IDLE_TIMEOUT_MS", "MS", "keep-alive connection closed after this long without a request (default 60000)",
       [](ServeOptions& o, const std::string& v) { o.idle_timeout_ms = to_int("--idle-timeout", v, 100, 3600000); }},
      {"--header-timeout", "FLUXPIPE_HEADER_TIMEOUT_MS", "MS", "a request's headers must arrive within this (default 10000)",
       [](ServeOptions& o, const std::string& v) { o.header_timeout_ms = to_int("--header-timeout", v, 100, 600000); }},
      {"--job-timeout", "FLUXPIPE_JOB_TIMEOUT_S", "S", "a job running longer fails with that reason, 0 = no limit (default 0)",
       [](ServeOptions& o, const std::string& v) { o.job_timeout_ms = int64_t{1000} * to_int("--job-timeout", v, 0, 86400 * 7); }},
      {"--webhook-secret-file", "FLUXPIPE_WEBHOOK_SECRET_FILE", "PATH", "file holding the webhook signing secret (default: <data>/webhook_secret, created once)",
       [](ServeOptions& o, const std::string& v) { o.webhook_secret = read_secret_file("--webhook-secret-file", v); }},
      {"--webhook-secret", "FLUXPIPE_WEBHOOK_SECRET", "whsec_...", "the secret itself; on the command line other local users can read it: prefer the environment or a file",
       [](ServeOptions& o, const std::string& v) { o.webhook_secret = v; }},
      {"--webhook-proxy", "FLUXPIPE_WEBHOOK_PROXY", "URL", "send webhooks through this proxy (default: none, whatever http_proxy says)",
       [](ServeOptions& o, const std::string& v) { o.webhook_proxy = v; }},
      {"--allow-private-webhooks", "FLUXPIPE_ALLOW_PRIVATE_WEBHOOKS", nullptr, "let webhooks reach loopback/private/link-local addresses",
       [](ServeOptions& o, const std::string& v) { o.allow_private_webhooks = to_bool("--allow-private-webhooks", v); }},
      {"--webhook-attempts", "FLUXPIPE_WEBHOOK_ATTEMPTS", "N", "delivery attempts per webhook (default 8)",
       [](ServeOptions& o, const std::string& v) { o.webhook_policy.max_attempts = to_int("--webhook-attempts", v, 1, 100); }},
      {"--webhook-retry-ms", "FLUXPIPE_WEBHOOK_RETRY_MS", "MS", "first retry delay, doubled each time (default 1000)",
       [](ServeOptions& o, const std::string& v) { o.webhook_policy.base_delay_ms = to_int("--webhook-retry-ms", v, 1, 3600000); }},
      {"--webhook-workers", "FLUXPIPE_WEBHOOK_WORKERS", "N", "webhook deliveries in flight at once (default 8)",
       [](ServeOptions& o, const std::string& v) { o.webhook_policy.workers = to_int("--webhook-workers", v, 1, 256); }},
      {"--webhook-per-host", "FLUXPIPE_WEBHOOK_PER_HOST", "N", "of which at most N to one receiving host (default 2)",
       [](ServeOptions& o, const std::string& v) { o.webhook_policy.per_host = to_int("--webhook-per-host", v, 1, 256); }},
      {"--quiet", "FLUXPIPE_QUIET", nullptr, "log warnings and errors only",
       [](ServeOptions& o, const std::string& v) { o.quiet = to_bool("--quiet", v); }},
  };
  return table;
}

}  // namespace

std::string serve_usage() {
  std::string s = "usage: fluxpipe serve --data DIR [--listen HOST:PORT] [--model PATH] [options]\n\noptions (each has an environment twin):\n";
  for (const Option& o : options()) {
    std::string left = std::string("  ") + o.flag + (o.value_name ? std::string(" ") + o.value_name : "");
    left.resize(std::max<size_t>(left.size() + 1, 34), ' ');
    s += left + o.help + "  [" + o.env + "]\n";
  }
  s += "\n  FLUXPIPE_API_KEYS=k1,k2 accepts these keys besides the ones made with `fluxpipe keys add`.\n";
  return s;
}

ServeOptions parse_serve_options(const std::vector<std::string>& args) {
  ServeOptions o;
  for (const Option& opt : options()) {
    if (const char* v = std::getenv(opt.env)) opt.set(o, v);
  }
  if (const char* keys = std::getenv("FLUXPIPE_API_KEYS")) o.env_api_keys = split_commas(keys);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    std::string value;
    bool has_inline = false;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline = true;
    }
    const Option* match = nullptr;
    for (const Option& opt : options()) {
      if (arg == opt.flag) match = &opt;
    }
    if (!match) throw UserError("[serve] unknown option '" + args[i] + "' (see fluxpipe serve --help)");
    if (std::string(match->flag) == "--webhook-secret") o.secret_on_command_line = true;
    if (!match->value_name) {
      match->set(o, has_inline ? value : "1");
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= args.size()) throw UserError(std::string("[serve] ") + match->flag + " needs a value " + match->value_name);
      value = args[++i];
    }
    match->set(o, value);
  }
  if (o.data_dir.empty()) throw UserError("[serve] --data DIR is required (or FLUXPIPE_DATA)");
  if (o.images_dir == "postgresql" && o.store_location.rfind("postgres", 0) != 0) {
    throw UserError("[serve] --images postgresql keeps images in the PostgreSQL store: it needs --store postgresql://...");
  }
  if (o.limits.default_steps > o.limits.max_steps) {
    throw UserError("[serve] --default-steps " + std::to_string(o.limits.default_steps) + " exceeds --max-steps " +
                    std::to_string(o.limits.max_steps));
  }
  return o;
}

}  // namespace fluxpipe::server
