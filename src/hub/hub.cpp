#include "hub/hub.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/uri.h"

namespace fluxpipe::hub {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Each '/'-separated segment percent-encoded (RFC 3986 unreserved characters kept).
std::string encode_path(const std::string& path) { return percent_encode(path, true); }

std::string to_hex(const unsigned char* p, unsigned n) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += hex[p[i] >> 4];
    s += hex[p[i] & 15];
  }
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A streaming digest (EVP): SHA-256 of the bytes, and git's blob SHA-1 ("blob <size>\0" + bytes).
struct Digests {
  EVP_MD_CTX* sha256 = EVP_MD_CTX_new();
  EVP_MD_CTX* sha1 = EVP_MD_CTX_new();
  explicit Digests(int64_t size) { reset(size); }
  ~Digests() {
    EVP_MD_CTX_free(sha256);
    EVP_MD_CTX_free(sha1);
  }
  void reset(int64_t size) {
    EVP_DigestInit_ex(sha256, EVP_sha256(), nullptr);
    EVP_DigestInit_ex(sha1, EVP_sha1(), nullptr);
    std::string header = "blob " + std::to_string(size);
    EVP_DigestUpdate(sha1, header.data(), header.size() + 1);   // with its NUL
  }
  void update(const char* p, size_t n) {
    EVP_DigestUpdate(sha256, p, n);
    EVP_DigestUpdate(sha1, p, n);
  }
  std::pair<std::string, std::string> finish() {
    unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
    unsigned na = 0, nb = 0;
    EVP_DigestFinal_ex(sha256, a, &na);
    EVP_DigestFinal_ex(sha1, b, &nb);
    return {to_hex(a, na), to_hex(b, nb)};
  }
};

}  // namespace

HubOptions hub_options_from_env() {
  HubOptions o;
  if (std::string e = env("HF_ENDPOINT"); !e.empty()) {
    while (!e.empty() && e.back() == '/') e.pop_back();
    o.endpoint = e;
  }
  o.token = env("HF_TOKEN");
  std::string off = lower(env("HF_HUB_OFFLINE"));
  o.offline = off == "1" || off == "true" || off == "yes" || off == "on";
  return o;
}

void hub_global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string HubClient::origin_of(const std::string& url) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  size_t end = url.find_first_of("/?#", scheme + 3);
  std::string authority = url.substr(scheme + 3, end == std::string::npos ? std::string::npos : end - scheme - 3);
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
  return lower(url.substr(0, scheme)) + "://" + lower(authority);
}

struct HubClient::Impl {
  HubOptions opt;
  CURL* curl = nullptr;
  const std::atomic<bool>* stop = nullptr;

  // One response: status, the headers we use, and the body (or nothing, when a sink took it).
  struct Reply {
    long status = 0;
    std::string location, link, content_range, body;
    CURLcode code = CURLE_OK;
    std::string curl_error;
  };

  // The sink gets the body of a 2xx answer; others are kept in Reply::body (for errors).
  Reply perform(const std::string& url, int64_t range_from, const std::function<bool(const char*, size_t)>& sink) {
    if (opt.offline) throw InternalError("[pull] a request was about to be made in offline mode: " + url);
    struct Ctx {
      Reply* r;
      const std::function<bool(const char*, size_t)>* sink;
      const std::atomic<bool>* stop;
    } ctx;
    Reply r;
    ctx.r = &r;
    ctx.sink = &sink;
    ctx.stop = stop;
    curl_easy_reset(curl);
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);   // by hand: the token must not follow
    curl_easy_setopt(curl, CURLOPT_PROXY, "");            // no proxy from the environment
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, opt.connect_timeout_s);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, opt.stall_timeout_s);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "fluxpipe-pull");
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    struct curl_slist* headers = nullptr;
    if (!opt.token.empty() && origin_of(url) == origin_of(opt.endpoint)) {
      headers = curl_slist_append(headers, ("Authorization: Bearer " + opt.token).c_str());
    }
    if (range_from > 0) headers = curl_slist_append(headers, ("Range: bytes=" + std::to_string(range_from) + "-").c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &ctx);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, +[](char* p, size_t size, size_t n, void* u) -> size_t {
      auto* c = static_cast<Ctx*>(u);
      std::string line(p, size * n);
      while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
      if (line.rfind("HTTP/", 0) == 0) {   // a new response (after 100 Continue, say)
        size_t sp = line.find(' ');
        c->r->status = sp == std::string::npos ? 0 : std::atol(line.c_str() + sp + 1);
        c->r->location.clear();
        c->r->link.clear();
        c->r->content_range.clear();
      } else if (size_t colon = line.find(':'); colon != std::string::npos) {
        std::string name = lower(line.substr(0, colon));
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(" \t"));
        if (name == "location") c->r->location = value;
        else if (name == "link") c->r->link = value;
        else if (name == "content-range") c->r->content_range = value;
      }
      return size * n;
    });
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &ctx);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, +[](char* p, size_t size, size_t n, void* u) -> size_t {
      auto* c = static_cast<Ctx*>(u);
      if (c->r->status >= 200 && c->r->status < 300 && *c->sink) return (*c->sink)(p, size * n) ? size * n : 0;
      if (c->r->body.size() < 64 * 1024) c->r->body.append(p, size * n);
      return size * n;
    });
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &ctx);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, +[](void* u, curl_off_t, curl_off_t, curl_off_t, curl_off_t) -> int {
      auto* c = static_cast<Ctx*>(u);
      return c->stop && c->stop->load() ? 1 : 0;
    });
    r.code = curl_easy_perform(curl);
    r.curl_error = errbuf[0] ? errbuf : curl_easy_strerror(r.code);
    curl_slist_free_all(headers);
    if (r.code == CURLE_ABORTED_BY_CALLBACK && stop && stop->load()) throw Interrupted();
    return r;
  }

  // Follows redirects by hand (at most 10), resolving relative ones against the current URL.
  Reply get(std::string url, int64_t range_from, const std::function<bool(const char*, size_t)>& sink) {
    for (int hop = 0; hop <= 10; ++hop) {
      Reply r = perform(url, range_from, sink);
      bool redirect = r.code == CURLE_OK && (r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 || r.status == 308);
      if (!redirect || r.location.empty()) return r;
      if (r.location.find("://") == std::string::npos) {
        std::string origin = origin_of(url);
        r.location = r.location[0] == '/' ? origin + r.location : url.substr(0, url.rfind('/') + 1) + r.location;
      }
      url = r.location;
    }
    throw TransferError("[pull] more than 10 redirects from " + url);
  }

  std::string repo_url(const std::string& repo) const { return opt.endpoint + "/" + repo; }

  [[noreturn]] void refuse(const Reply& r, const std::string& repo, const std::string& what) const {
    std::string page = repo_url(repo);
    if (r.status == 401) {
      if (opt.token.empty()) {
        throw UserError("[pull] the hub answered 401 for '" + repo + "' (" + what + "): the repository is gated or private, "
                        "or it does not exist. If it exists, open " + page + " while logged in, accept its terms, "
                        "and set HF_TOKEN to an access token of that account (" + opt.endpoint + "/settings/tokens)");
      }
      throw UserError("[pull] the hub refused the token in HF_TOKEN for '" + repo + "' (401): it may be expired or mistyped, "
                      "or the repository does not exist; make a new token at " + opt.endpoint + "/settings/tokens");
    }
    if (r.status == 403) {
      throw UserError("[pull] access to '" + repo + "' is refused (403): it is gated and this account has not accepted its "
                      "terms, or the token lacks read access. Accept them at " + page + " with the token's account");
    }
    if (r.status == 404) {
      throw UserError("[pull] the hub at " + opt.endpoint + " has no " + what + " (404); check the repository name and revision");
    }
    if (r.status >= 500 || r.status == 429 || r.status == 0) {
      throw TransferError("[pull] " + what + ": the hub answered " + std::to_string(r.status) + (r.code ? " (" + r.curl_error + ")" : ""));
    }
    throw UserError("[pull] " + what + ": the hub answered HTTP " + std::to_string(r.status));
  }

  Reply get_text(const std::string& url, const std::string& repo, const std::string& what) {
    std::string body;
    Reply r = get(url, 0, [&](const char* p, size_t n) {
      body.append(p, n);
      return body.size() < (size_t{64} << 20);
    });
    if (r.code != CURLE_OK) throw TransferError("[pull] " + what + ": " + r.curl_error + " (" + url + ")");
    if (r.status != 200) refuse(r, repo, what);
    r.body = std::move(body);
    return r;
  }
};

HubClient::HubClient(HubOptions options) : impl_(new Impl) {
  hub_global_init();
  impl_->opt = std::move(options);
  impl_->curl = curl_easy_init();
  if (!impl_->curl) throw InternalError("[pull] curl_easy_init failed");
}

HubClient::~HubClient() {
  curl_easy_cleanup(impl_->curl);
  delete impl_;
}

RepoTree HubClient::list(const std::string& repo, const std::string& revision) {
  RepoTree t;
  t.repo = repo;
  t.revision = revision;
  std::string api = impl_->opt.endpoint + "/api/models/" + repo;
  Impl::Reply info = impl_->get_text(api + "/revision/" + encode_path(revision), repo,
                                     "repository '" + repo + "' at revision '" + revision + "'");
  nlohmann::json j = nlohmann::json::parse(info.body, nullptr, false);
  if (!j.is_object() || !j.contains("sha") || !j["sha"].is_string()) {
    throw TransferError("[pull] the hub's answer for '" + repo + "' names no commit (\"sha\")");
  }
  t.commit = j["sha"];
  std::string url = api + "/tree/" + t.commit + "?recursive=true";
  for (int page = 0; !url.empty() && page < 1000; ++page) {
    Impl::Reply r = impl_->get_text(url, repo, "the file list of '" + repo + "'");
    nlohmann::json list = nlohmann::json::parse(r.body, nullptr, false);
    if (!list.is_array()) throw TransferError("[pull] the hub's file list of '" + repo + "' is not a JSON array");
    for (const nlohmann::json& e : list) {
      if (!e.is_object() || e.value("type", "") != "file" || !e.contains("path")) continue;
      RemoteFile f;
      f.path = e["path"].get<std::string>();
      f.size = e.value("size", int64_t{0});
      f.git_oid = e.value("oid", "");
      if (e.contains("lfs") && e["lfs"].is_object()) {
        f.sha256 = e["lfs"].value("oid", "");
        f.size = e["lfs"].value("size", f.size);
      }
      if (f.path.empty() || f.path[0] == '/' || f.path.find("..") != std::string::npos || f.size < 0) {
        throw TransferError("[pull] the hub listed an unsafe path in '" + repo + "': '" + f.path + "'");
      }
      t.files.push_back(std::move(f));
    }
    // The next page, if any: Link: <URL>; rel="next".
    url.clear();
    if (size_t rel = r.link.find("rel=\"next\""); rel != std::string::npos) {
      size_t open = r.link.rfind('<', rel), close = r.link.find('>', open);
      if (open != std::string::npos && close != std::string::npos) url = r.link.substr(open + 1, close - open - 1);
    }
  }
  std::sort(t.files.begin(), t.files.end(), [](const RemoteFile& a, const RemoteFile& b) { return a.path < b.path; });
  return t;
}

void HubClient::download(const std::string& repo, const std::string& commit, const RemoteFile& f, const std::string& partial,
                         const std::function<void(int64_t)>& on_bytes, const std::atomic<bool>& stop) {
  impl_->stop = &stop;
  int fd = open(partial.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("[pull] cannot open '" + partial + "': " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st{};
  fstat(fd, &st);
  int64_t have = st.st_size;
  if (have > f.size) {
    if (ftruncate(fd, 0) != 0) throw IoError("[pull] cannot truncate '" + partial + "'");
    have = 0;
  }
  // What the partial file already holds counts towards the digests (read back once).
  Digests d(f.size);
  {
    std::vector<char> buf(size_t{1} << 20);
    int64_t done = 0;
    while (done < have) {
      ssize_t n = pread(fd, buf.data(), std::min<size_t>(buf.size(), static_cast<size_t>(have - done)), done);
      if (n <= 0) throw IoError("[pull] cannot read '" + partial + "': " + std::strerror(errno));
      d.update(buf.data(), static_cast<size_t>(n));
      done += n;
      if (stop.load()) throw Interrupted();
    }
  }
  if (have < f.size) {
    std::string url = impl_->repo_url(repo) + "/resolve/" + commit + "/" + encode_path(f.path);
    int64_t pos = have;
    bool first = true;
    std::string write_error;
    Impl::Reply r = impl_->get(url, have, [&](const char* p, size_t n) {
      if (first) {
        first = false;
        // A 200 to a ranged request is the whole file: start over.
        if (have > 0) {
          long status = 0;
          curl_easy_getinfo(impl_->curl, CURLINFO_RESPONSE_CODE, &status);
          if (status == 200) {
            if (ftruncate(fd, 0) != 0) return false;
            d.reset(f.size);
            pos = 0;
          }
        }
      }
      if (pos + static_cast<int64_t>(n) > f.size) {
        write_error = "the hub sent more bytes than the file's listed size";
        return false;
      }
      if (pwrite(fd, p, n, pos) != static_cast<ssize_t>(n)) {
        write_error = std::string("cannot write '") + partial + "': " + std::strerror(errno);
        return false;
      }
      d.update(p, n);
      pos += static_cast<int64_t>(n);
      on_bytes(static_cast<int64_t>(n));
      return true;
    });
    if (!write_error.empty()) throw IoError("[pull] " + f.path + ": " + write_error);
    if (r.code == CURLE_OK && r.status == 416) {
      // The range is not satisfiable (the file changed?): the next attempt starts from zero.
      if (ftruncate(fd, 0) != 0) throw IoError("[pull] cannot truncate '" + partial + "'");
      throw TransferError("[pull] " + f.path + ": the hub refused to resume (416); starting it again");
    }
    if (r.code == CURLE_OK && r.status != 200 && r.status != 206) impl_->refuse(r, repo, "file '" + f.path + "' of '" + repo + "'");
    if (r.code == CURLE_OK && r.status == 206 && have > 0 && r.content_range.rfind("bytes " + std::to_string(have) + "-", 0) != 0) {
      if (ftruncate(fd, 0) != 0) throw IoError("[pull] cannot truncate '" + partial + "'");
      throw TransferError("[pull] " + f.path + ": the hub resumed at the wrong place (" + r.content_range + ")");
    }
    if (pos < f.size) {
      throw TransferError("[pull] " + f.path + ": the transfer stopped at " + std::to_string(pos) + " of " +
                          std::to_string(f.size) + " bytes" + (r.code ? " (" + r.curl_error + ")" : ""));
    }
  }
  if (fsync(fd) != 0) throw IoError("[pull] cannot write '" + partial + "': " + std::strerror(errno));
  auto [sha256, sha1] = d.finish();
  const bool by_sha256 = !f.sha256.empty();
  const std::string& want = by_sha256 ? f.sha256 : f.git_oid;
  const std::string& got = by_sha256 ? sha256 : sha1;
  if (!want.empty() && lower(want) != got) {
    unlink(partial.c_str());
    throw UserError("[pull] " + f.path + " from '" + repo + "' is corrupt: its " + (by_sha256 ? "SHA-256" : "git blob SHA-1") +
                    " is " + got + " but the hub lists " + want + "; the downloaded file was deleted (run pull again)");
  }
}

}  // namespace fluxpipe::hub
