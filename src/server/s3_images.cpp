#include "server/s3_images.h"

#include <curl/curl.h>

#include <cstdlib>

#include "core/clock.h"
#include "core/error.h"
#include "server/crypto.h"

namespace fluxpipe::server {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

size_t collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// The <Code> of an S3 error body ("NoSuchBucket", "SignatureDoesNotMatch", ...), if any.
std::string s3_error_code(const std::string& body) {
  size_t a = body.find("<Code>");
  size_t b = body.find("</Code>");
  if (a == std::string::npos || b == std::string::npos || b < a) return "";
  return body.substr(a + 6, b - a - 6);
}

struct Reply {
  long status = 0;
  std::string body;
};

class S3ImageStore final : public ImageStore {
 public:
  explicit S3ImageStore(S3Location loc) : loc_(std::move(loc)) {
    // scheme://host[:port] -> the host header, and the base URL requests go to.
    size_t scheme_end = loc_.endpoint.find("://");
    if (scheme_end == std::string::npos) {
      throw UserError("[images] --s3-endpoint '" + loc_.endpoint + "' must look like https://host[:port]");
    }
    std::string scheme = loc_.endpoint.substr(0, scheme_end);
    std::string host = loc_.endpoint.substr(scheme_end + 3);
    while (!host.empty() && host.back() == '/') host.pop_back();
    if (host.empty() || host.find('/') != std::string::npos) {
      throw UserError("[images] --s3-endpoint '" + loc_.endpoint + "' must be scheme://host[:port] without a path");
    }
    host_ = loc_.path_style ? host : loc_.bucket + "." + host;
    base_ = scheme + "://" + host_;
  }

  void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes) override {
    check_image_path(token, name);
    std::string body(bytes.begin(), bytes.end());
    Reply r = send("PUT", object_path(token, name), body, "image/png");
    if (r.status != 200) throw IoError("[images] " + describe_failure("PUT", token, name, r));
  }

  std::optional<std::string> read(const std::string& token, const std::string& name) const override {
    check_image_path(token, name);
    Reply r = send("GET", object_path(token, name), "", "");
    if (r.status == 200) return std::move(r.body);
    if (r.status == 404 && s3_error_code(r.body) != "NoSuchBucket") return std::nullopt;
    throw IoError("[images] " + describe_failure("GET", token, name, r));
  }

  void remove(const std::string& token, const std::vector<std::string>& names) override {
    for (const std::string& name : names) {
      check_image_path(token, name);
      Reply r = send("DELETE", object_path(token, name), "", "");
      if (r.status != 204 && r.status != 200 && r.status != 404) {
        throw IoError("[images] " + describe_failure("DELETE", token, name, r));
      }
    }
  }

  std::string describe() const override {
    return "s3://" + loc_.bucket + (loc_.prefix.empty() ? "" : "/" + loc_.prefix) + " at " + loc_.endpoint +
           (loc_.path_style ? " (path-style)" : "");
  }

 private:
  // The request path, decoded (the signer and the URL encode it the same way).
  std::string object_path(const std::string& token, const std::string& name) const {
    std::string key = (loc_.prefix.empty() ? "" : loc_.prefix + "/") + token + "/" + name;
    return (loc_.path_style ? "/" + loc_.bucket : "") + "/" + key;
  }

  std::string describe_failure(const char* method, const std::string& token, const std::string& name,
                               const Reply& r) const {
    std::string code = s3_error_code(r.body);
    std::string what = std::string(method) + " " + token + "/" + name + " on " + describe() + ": ";
    if (r.status == 0) return what + r.body;   // transport error text
    what += "HTTP " + std::to_string(r.status) + (code.empty() ? "" : " " + code);
    if (r.status == 403) what += " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy)";
    return what;
  }

  Reply send(const char* method, const std::string& path, const std::string& body,
             const std::string& content_type) const {
    SignedRequestInput in;
    in.method = method;
    in.path = path;
    in.headers["host"] = host_;
    if (!content_type.empty()) in.headers["content-type"] = content_type;
    in.payload_sha256 = sha256_hex(body);
    std::map<std::string, std::string> auth = sigv4_sign(in, loc_.credentials, amz_date_of(wall_clock_ms() / 1000));

    Reply reply;
    CURL* curl = curl_easy_init();
    if (!curl) throw IoError("[images] cannot create a libcurl handle");
    curl_slist* headers = nullptr;
    for (const auto& [k, v] : auth) headers = curl_slist_append(headers, (k + ": " + v).c_str());
    if (!content_type.empty()) headers = curl_slist_append(headers, ("Content-Type: " + content_type).c_str());
    headers = curl_slist_append(headers, "Expect:");   // no 100-continue round trip
    std::string url = base_ + sigv4_uri_encode(path, true);
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(loc_.timeout_ms));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
    if (std::string(method) == "PUT") {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    }
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
      curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
    } else {
      reply.status = 0;
      reply.body = curl_easy_strerror(rc);
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    return reply;
  }

  S3Location loc_;
  std::string host_;
  std::string base_;
};

}  // namespace

S3Location s3_location_from(const std::string& url, const std::string& endpoint, bool path_style) {
  if (url.rfind("s3://", 0) != 0) throw UserError("[images] '" + url + "' is not an s3://bucket/prefix location");
  std::string rest = url.substr(5);
  size_t slash = rest.find('/');
  S3Location loc;
  loc.bucket = rest.substr(0, slash);
  loc.prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  while (!loc.prefix.empty() && loc.prefix.back() == '/') loc.prefix.pop_back();
  if (loc.bucket.empty()) throw UserError("[images] '" + url + "' names no bucket (expected s3://bucket/prefix)");
  loc.credentials.access_key_id = env("AWS_ACCESS_KEY_ID");
  loc.credentials.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
  loc.credentials.session_token = env("AWS_SESSION_TOKEN");
  std::string region = env("AWS_REGION").empty() ? env("AWS_DEFAULT_REGION") : env("AWS_REGION");
  loc.credentials.region = region.empty() ? "us-east-1" : region;
  if (loc.credentials.access_key_id.empty() || loc.credentials.secret_access_key.empty()) {
    throw UserError("[images] " + url + " needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment");
  }
  loc.endpoint = endpoint.empty() ? "https://s3." + loc.credentials.region + ".amazonaws.com" : endpoint;
  loc.path_style = path_style;
  return loc;
}

std::unique_ptr<ImageStore> open_s3_image_store(const S3Location& location) {
  return std::make_unique<S3ImageStore>(location);
}

}  // namespace fluxpipe::server
