// A Hugging Face Hub on loopback for the pull tests: the revision, tree and resolve endpoints for
// the repositories a test adds, with large files (>= 1 KiB, as LFS) redirected to a second
// server — the "CDN" — on another port, which honours `Range`. Knobs: cut the next CDN transfer
// after N bytes, corrupt one byte of every CDN body, gate a repository behind a token, page the
// tree listing, slow the CDN down. Counters: requests per server, bytes the CDN sent, and every Authorization header
// each server saw. Nothing here reaches beyond 127.0.0.1.
#pragma once

#include <httplib.h>
#include <openssl/evp.h>

#include <atomic>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace fluxpipe::testing {

class TestHub {
 public:
  struct Repo {
    std::string commit;                           // 40 hex digits
    std::map<std::string, std::string> files;     // path -> content
    bool gated = false;                           // needs "Authorization: Bearer <token>"
  };

  static constexpr size_t kLfsFrom = 1024;        // files this large are LFS (sha256, CDN)
  const std::string token = "hf_test_token_1234";
  std::atomic<int64_t> cut_after{-1};             // the next CDN body stops after this many bytes
  std::atomic<bool> corrupt{false};               // flip one byte of every CDN body while set
  std::atomic<int> page_size{0};                  // tree entries per page (0: one page)
  std::atomic<int> chunk_delay_ms{0};             // the CDN waits this long before each 16 KiB

  TestHub() {
    hub_.Get(R"(/api/models/([^/]+/[^/]+)/revision/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      Repo* r = admit(req, res);
      if (!r) return;
      std::string rev = req.matches[2];
      if (rev != "main" && rev != r->commit) {
        res.status = 404;
        res.set_content(R"({"error":"Revision Not Found"})", "application/json");
        return;
      }
      res.set_content(nlohmann::json{{"id", std::string(req.matches[1])}, {"sha", r->commit}}.dump(), "application/json");
    });
    hub_.Get(R"(/api/models/([^/]+/[^/]+)/tree/([^/?]+))", [this](const httplib::Request& req, httplib::Response& res) {
      Repo* r = admit(req, res);
      if (!r) return;
      nlohmann::json all = nlohmann::json::array();
      std::map<std::string, bool> dirs;
      for (const auto& [path, content] : r->files) {
        for (size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) dirs[path.substr(0, slash)] = true;
        nlohmann::json e = {{"type", "file"}, {"path", path}, {"size", content.size()}, {"oid", git_blob_sha1(content)}};
        if (content.size() >= kLfsFrom) e["lfs"] = {{"oid", sha256(content)}, {"size", content.size()}, {"pointerSize", 134}};
        all.push_back(e);
      }
      for (const auto& [d, _] : dirs) all.push_back({{"type", "directory"}, {"path", d}, {"oid", std::string(40, '0')}});
      size_t cursor = req.has_param("cursor") ? std::stoul(req.get_param_value("cursor")) : 0;
      size_t n = page_size.load() > 0 ? static_cast<size_t>(page_size.load()) : all.size();
      nlohmann::json page = nlohmann::json::array();
      for (size_t i = cursor; i < std::min(all.size(), cursor + n); ++i) page.push_back(all[i]);
      if (cursor + n < all.size()) {
        res.set_header("Link", "<" + endpoint() + req.path + "?recursive=true&cursor=" + std::to_string(cursor + n) + ">; rel=\"next\"");
      }
      res.set_content(page.dump(), "application/json");
    });
    hub_.Get(R"(/([^/]+/[^/]+)/resolve/([^/]+)/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      Repo* r = admit(req, res);
      if (!r) return;
      auto f = r->files.find(req.matches[3]);
      if (f == r->files.end()) {
        res.status = 404;
        return;
      }
      if (f->second.size() < kLfsFrom) {
        res.set_content(f->second, "application/octet-stream");
        return;
      }
      res.status = 302;
      res.set_header("Location", "http://127.0.0.1:" + std::to_string(cdn_port_) + "/blobs/" + sha256(f->second) + "?sig=x");
    });
    cdn_.Get(R"(/blobs/([0-9a-f]{64}))", [this](const httplib::Request& req, httplib::Response& res) {
      std::string content;
      {
        std::lock_guard lock(mu_);
        ++cdn_requests_;
        cdn_auth_.push_back(req.get_header_value("Authorization"));
        for (const auto& [name, repo] : repos_) {
          for (const auto& [path, c] : repo.files) {
            if (sha256(c) == std::string(req.matches[1])) content = c;
          }
        }
      }
      if (content.empty()) {
        res.status = 404;
        return;
      }
      if (corrupt.load()) content[content.size() / 2] ^= 0x5a;
      // httplib applies the request's Range to a sized content provider itself (206 and
      // Content-Range, offsets into the whole body); a cut counts this response's bytes.
      auto body = std::make_shared<std::string>(std::move(content));
      auto sent = std::make_shared<size_t>(0);
      int64_t cut = cut_after.exchange(-1);
      // A transfer is in flight from here until httplib releases the provider; tests wait for
      // none before counting, so a killed client's last chunk cannot land in the next count.
      ++transfers_;
      res.set_content_provider(body->size(), "application/octet-stream",
                               [this, body, sent, cut](size_t offset, size_t length, httplib::DataSink& sink) {
                                 size_t n = std::min<size_t>(length, 16384);
                                 if (int d = chunk_delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
                                 if (cut >= 0) n = std::min(n, static_cast<size_t>(cut) - *sent);
                                 if (n > 0) {
                                   if (!sink.write(body->data() + offset, n)) return false;  // the client is gone
                                   *sent += n;
                                   cdn_bytes_ += static_cast<int64_t>(n);
                                 }
                                 // Returning false closes the connection mid-body: a cut.
                                 return !(cut >= 0 && *sent >= static_cast<size_t>(cut));
                               },
                               [this](bool) { --transfers_; });
    });
    hub_port_ = hub_.bind_to_any_port("127.0.0.1");
    cdn_port_ = cdn_.bind_to_any_port("127.0.0.1");
    hub_thread_ = std::thread([this] { hub_.listen_after_bind(); });
    cdn_thread_ = std::thread([this] { cdn_.listen_after_bind(); });
    for (int i = 0; i < 500 && !(hub_.is_running() && cdn_.is_running()); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  ~TestHub() {
    hub_.stop();
    cdn_.stop();
    hub_thread_.join();
    cdn_thread_.join();
  }

  void add_repo(const std::string& name, Repo repo) {
    std::lock_guard lock(mu_);
    if (repo.commit.empty()) repo.commit = sha256(name).substr(0, 40);
    repos_[name] = std::move(repo);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(hub_port_); }

  int64_t cdn_bytes() const { return cdn_bytes_.load(); }
  // Waits (up to 5 s) until no blob transfer is in flight; true when none is.
  bool wait_for_no_transfers() const {
    for (int i = 0; i < 500 && transfers_.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return transfers_.load() == 0;
  }
  int hub_requests() {
    std::lock_guard lock(mu_);
    return hub_requests_;
  }
  int cdn_requests() {
    std::lock_guard lock(mu_);
    return cdn_requests_;
  }
  std::vector<std::string> hub_authorizations() {
    std::lock_guard lock(mu_);
    return hub_auth_;
  }
  std::vector<std::string> cdn_authorizations() {
    std::lock_guard lock(mu_);
    return cdn_auth_;
  }

  static std::string hex(const unsigned char* p, unsigned n) {
    static const char* d = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < n; ++i) s += {d[p[i] >> 4], d[p[i] & 15]};
    return s;
  }
  static std::string digest(const EVP_MD* md, const std::string& a, const std::string& b = "") {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_MD_CTX* c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, md, nullptr);
    EVP_DigestUpdate(c, a.data(), a.size());
    EVP_DigestUpdate(c, b.data(), b.size());
    EVP_DigestFinal_ex(c, out, &n);
    EVP_MD_CTX_free(c);
    return hex(out, n);
  }
  static std::string sha256(const std::string& s) { return digest(EVP_sha256(), s); }
  static std::string git_blob_sha1(const std::string& s) {
    return digest(EVP_sha1(), "blob " + std::to_string(s.size()) + std::string(1, '\0'), s);
  }

 private:
  // The repository of a hub request, after the gate; nullptr when answered already (401/403/404).
  Repo* admit(const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mu_);
    ++hub_requests_;
    std::string auth = req.get_header_value("Authorization");
    hub_auth_.push_back(auth);
    auto it = repos_.find(req.matches[1]);
    if (it == repos_.end()) {
      res.status = auth.empty() ? 401 : 404;   // as the real hub: anonymous gets 401 for a missing repo
      res.set_content(R"({"error":"Repository Not Found"})", "application/json");
      return nullptr;
    }
    if (it->second.gated) {
      if (auth != "Bearer " + token) {
        res.status = 401;
        res.set_content(R"({"error":"Access to this repository is restricted"})", "application/json");
        return nullptr;
      }
    }
    return &it->second;
  }

  httplib::Server hub_, cdn_;
  int hub_port_ = 0, cdn_port_ = 0;
  std::thread hub_thread_, cdn_thread_;
  std::mutex mu_;
  std::map<std::string, Repo> repos_;
  std::atomic<int64_t> cdn_bytes_{0};
  std::atomic<int> transfers_{0};
  int hub_requests_ = 0, cdn_requests_ = 0;
  std::vector<std::string> hub_auth_, cdn_auth_;
};

}  // namespace fluxpipe::testing
