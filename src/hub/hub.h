// fluxpipe hub: a client of the Hugging Face Hub's HTTP interface, spoken as its own client does.
//
//   list:     GET {endpoint}/api/models/{repo}/revision/{revision}   -> {"sha": commit}
//             GET {endpoint}/api/models/{repo}/tree/{commit}?recursive=true
//                 -> [{"type": "file", "path", "size", "oid", "lfs": {"oid": sha256, "size"}}],
//                    further pages named by a `Link: <...>; rel="next"` header
//   download: GET {endpoint}/{repo}/resolve/{commit}/{path}, redirects followed by hand (to the
//             CDN's host, or relative ones on the hub): the token (HF_TOKEN, as
//             `Authorization: Bearer`) goes only to the endpoint's own host, never to a redirect
//             target elsewhere, and is never logged.
// Downloads resume: bytes already in the partial file are kept and the rest asked for with
// `Range`; the file's SHA-256 (large files: `lfs.oid`) or git blob SHA-1 (small files: `oid`) and
// size are checked as the bytes stream. No proxy environment is honoured (curl's http_proxy and
// friends are switched off): the hub's address is the one the user named.
// Thread-safety: one HubClient per thread (each holds its own connection); curl_global_init is
// done once by hub_global_init() before threads start.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace fluxpipe::hub {

struct HubOptions {
  std::string endpoint = "https://huggingface.co";   // HF_ENDPOINT, no trailing slash
  std::string token;                                 // HF_TOKEN; empty: anonymous
  bool offline = false;                              // HF_HUB_OFFLINE=1: no request is ever made
  long connect_timeout_s = 30;
  long stall_timeout_s = 60;                         // a transfer without a byte for this long fails
};

// From the environment: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE ("1", "true", "yes", "on").
HubOptions hub_options_from_env();
void hub_global_init();

struct RemoteFile {
  std::string path;       // in the repository, '/'-separated
  int64_t size = 0;
  std::string sha256;     // lfs.oid (large files); empty for small ones
  std::string git_oid;    // oid: the git blob SHA-1 of the content
};

struct RepoTree {
  std::string repo, revision, commit;
  std::vector<RemoteFile> files;
};

// The transfer was stopped by the caller's flag (Ctrl-C); the partial file is kept.
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};
// A network failure worth retrying (a cut connection, a timeout, a 5xx); the partial is kept.
struct TransferError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class HubClient {
 public:
  explicit HubClient(HubOptions options);
  ~HubClient();
  HubClient(const HubClient&) = delete;
  HubClient& operator=(const HubClient&) = delete;

  // The revision's commit and its files. UserError for a gated, private or missing repository
  // (saying what to do) or revision; TransferError when the hub cannot be reached.
  RepoTree list(const std::string& repo, const std::string& revision);

  // Brings `partial` to the whole of `f` (keeping what it holds), checking size and digest;
  // on_bytes(n) after each chunk written. A digest mismatch deletes `partial` and throws
  // UserError naming the file and both digests. Throws Interrupted when `stop` is set.
  void download(const std::string& repo, const std::string& commit, const RemoteFile& f, const std::string& partial,
                const std::function<void(int64_t)>& on_bytes, const std::atomic<bool>& stop);

  // "scheme://host[:port]" of a URL (lower-cased host), for the same-host rule of the token.
  static std::string origin_of(const std::string& url);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace fluxpipe::hub
