// The HTTP layer under hostile or careless clients, over raw sockets on 127.0.0.1: body and
// header limits that hold for every transfer encoding and before authentication, idle and
// slow connections, connection caps, keep-alive without delayed-ACK stalls, and a clean stop
// that answers waiting clients and re-queues the running job without spending an attempt.
#include <gtest/gtest.h>
#include <dirent.h>
#include <poll.h>

#include <atomic>
#include <cstring>

#include "pipeline/memory_plan.h"
#include "test_util.h"

namespace fluxpipe::testing {
namespace {

// A raw client socket connected to 127.0.0.1:port.
class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawConn() {
    if (fd_ >= 0) close(fd_);
  }
  RawConn(const RawConn&) = delete;
  bool ok() const { return ok_; }
  bool send_all(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  bool readable(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1;
  }
  // Everything until the peer closes or `timeout_ms` of silence.
  std::string read_until_close(int timeout_ms = 3000) {
    return read_while(timeout_ms, [](const std::string&) { return true; });
  }
  // One response whose headers carry Content-Length.
  std::string read_response(int timeout_ms = 3000) {
    return read_while(timeout_ms, [](const std::string& out) {
      size_t end = out.find("\r\n\r\n");
      if (end == std::string::npos) return true;
      size_t cl = out.find("Content-Length: ");
      if (cl == std::string::npos || cl > end) cl = out.find("content-length: ");
      size_t len = cl == std::string::npos ? 0 : std::stoul(out.substr(cl + 16));
      return out.size() < end + 4 + len;
    });
  }
  // Reads while `more(received so far)` says so and the peer keeps talking.
  std::string read_while(int timeout_ms, const std::function<bool(const std::string&)>& more) {
    std::string out;
    char buf[8192];
    while (readable(timeout_ms)) {
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      if (!more(out)) break;
    }
    return out;
  }
  bool closed_by_peer(int timeout_ms) {
    if (!readable(timeout_ms)) return false;
    char c;
    return recv(fd_, &c, 1, 0) <= 0;
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0) return 0;
  return std::stoi(response.substr(9, 3));
}

int thread_count() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// Streams a chunked body of `total` bytes until the server answers; returns the answer.
std::string stream_chunked(RawConn& c, const std::string& head, size_t total) {
  EXPECT_TRUE(c.send_all(head));
  std::string chunk(64 * 1024, 'a');
  char size_line[32];
  std::snprintf(size_line, sizeof size_line, "%zx\r\n", chunk.size());
  std::string framed = std::string(size_line) + chunk + "\r\n";
  for (size_t sent = 0; sent < total; sent += chunk.size()) {
    if (c.readable(0)) break;   // the server answered already
    if (!c.send_all(framed)) break;
  }
  return c.read_response();
}

TEST(Http, ChunkedBodyOverTheLimitIs413WithoutBufferingIt) {
  TestServer s([](server::ServeOptions& o) { o.max_body_bytes = 64 * 1024; });
  size_t before = resident_bytes();
  RawConn c(s.port);
  ASSERT_TRUE(c.ok());
  std::string answer = stream_chunked(c,
                                      "POST /generate/v3 HTTP/1.1\r\nHost: x\r\nAPI-Key: " + s.key +
                                          "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      size_t{200} << 20);
  EXPECT_EQ(status_of(answer), 413) << answer.substr(0, 200);
  EXPECT_NE(answer.find("too large"), std::string::npos);
  // The server read at most the limit plus a drain of 1 MiB, never the 200 MB.
  EXPECT_LT(resident_bytes(), before + (size_t{24} << 20));
}

TEST(Http, DeclaredLengthOverTheLimitIs413BeforeTheBody) {
  TestServer s([](server::ServeOptions& o) { o.max_body_bytes = 4096; });
  RawConn c(s.port);
  ASSERT_TRUE(c.send_all("POST /generate/v3 HTTP/1.1\r\nHost: x\r\nAPI-Key: " + s.key +
                         "\r\nContent-Length: 209715200\r\n\r\n"));
  EXPECT_EQ(status_of(c.read_response()), 413);
}

TEST(Http, WithoutAKeyTheBodyIsNeverRead) {
  TestServer s([](server::ServeOptions& o) { o.max_body_bytes = 16 << 20; });
  size_t before = resident_bytes();
  RawConn c(s.port);
  // Under the body limit, but no key: refused on the headers, the 16 MB never buffered.
  std::string answer = stream_chunked(c, "POST /generate/v3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      size_t{15} << 20);
  EXPECT_EQ(status_of(answer), 401) << answer.substr(0, 200);
  EXPECT_LT(resident_bytes(), before + (size_t{8} << 20));
  RawConn d(s.port);
  ASSERT_TRUE(d.send_all("POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"));
  std::string openai = d.read_response();
  EXPECT_EQ(status_of(openai), 401);
  json e = json::parse(openai.substr(openai.find("\r\n\r\n") + 4));
  EXPECT_EQ(e["error"]["code"], "invalid_api_key");
  EXPECT_TRUE(e["error"].contains("param"));
}

TEST(Http, OversizedHeadersAre431) {
  TestServer s([](server::ServeOptions& o) { o.max_header_bytes = 4096; });
  RawConn c(s.port);
  ASSERT_TRUE(c.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8000, 'b') + "\r\n\r\n"));
  EXPECT_EQ(status_of(c.read_response()), 431);
}

TEST(Http, UnknownPathsAndMethodsAnswerJson) {
  TestServer s;
  auto c = s.client();
  auto missing = c.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(json::parse(missing->body)["status"], "FAILURE");
  auto wrong = c.Put("/healthz", "", "text/plain");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 405);
  EXPECT_FALSE(wrong->get_header_value("Allow").empty());
  auto head = c.Head("/healthz");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
}

TEST(Http, IdleConnectionsCostNoThreadsAndDoNotLockOthersOut) {
  TestServer s;
  int threads_before = thread_count();
  std::vector<std::unique_ptr<RawConn>> idle;
  for (int i = 0; i < 1500; ++i) {
    idle.push_back(std::make_unique<RawConn>(s.port));
    ASSERT_TRUE(idle.back()->ok()) << i;
  }
  // A keep-alive poller on each of some of them, left open afterwards.
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(idle[i]->send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(status_of(idle[i]->read_response()), 200);
  }
  auto t0 = std::chrono::steady_clock::now();
  auto res = s.client().Get("/healthz");
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_LT(ms, 2000.0);   // the old thread-per-connection server took ~10 s here
  EXPECT_LE(thread_count(), threads_before + 1);
}

TEST(Http, KeepAliveAnswersDoNotWaitForDelayedAcks) {
  TestServer s;
  auto c = s.client();
  c.set_keep_alive(true);
  ASSERT_TRUE(c.Get("/healthz"));
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    auto res = c.Get("/openapi.json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  // A header/body split with Nagle and delayed ACKs costs ~40 ms per request: 800 ms here.
  EXPECT_LT(ms, 400.0);
}

TEST(Http, IdleAndSlowConnectionsAreClosed) {
  TestServer s([](server::ServeOptions& o) {
    o.idle_timeout_ms = 300;
    o.header_timeout_ms = 300;
  });
  RawConn idle(s.port);
  EXPECT_TRUE(idle.closed_by_peer(3000));
  RawConn slow(s.port);
  ASSERT_TRUE(slow.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n"));   // headers never end
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(slow.closed_by_peer(3000));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
}

TEST(Http, ConnectionCapsRefuseWithAnAnswer) {
  TestServer s([](server::ServeOptions& o) { o.max_connections_per_ip = 3; });
  std::vector<std::unique_ptr<RawConn>> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::make_unique<RawConn>(s.port));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  RawConn fourth(s.port);
  EXPECT_EQ(status_of(fourth.read_until_close()), 429);
  held.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(s.client().Get("/healthz")->status, 200);

  TestServer t([](server::ServeOptions& o) { o.max_connections = 2; });
  RawConn a(t.port), b(t.port);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  RawConn c(t.port);
  EXPECT_EQ(status_of(c.read_until_close()), 503);
}

TEST(Http, ExpectContinueIsHonoured) {
  TestServer s;
  RawConn c(s.port);
  std::string body = json{{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 1}}.dump();
  ASSERT_TRUE(c.send_all("POST /generate/v3 HTTP/1.1\r\nHost: x\r\nAPI-Key: " + s.key +
                         "\r\nExpect: 100-continue\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n"));
  ASSERT_TRUE(c.readable(2000));
  char buf[64] = {};
  ssize_t n = recv(c.fd(), buf, sizeof buf - 1, 0);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf).rfind("HTTP/1.1 100 Continue", 0), 0u) << buf;
  ASSERT_TRUE(c.send_all(body));
  EXPECT_EQ(status_of(c.read_response()), 200);
}

TEST(Http, CleanStopAnswersWaitersAndRequeuesWithoutSpendingAnAttempt) {
  auto s = std::make_unique<TestServer>([](server::ServeOptions& o) { o.sync_wait_ms = 60000; }, /*step_ms=*/200);
  RawConn idle(s->port);   // an idle keep-alive client must not hold the stop up
  std::pair<int, json> answer;
  std::thread waiter([&] {
    answer = s->submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 50}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(700));   // running, a few steps in
  auto t0 = std::chrono::steady_clock::now();
  s->server->stop();
  double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  waiter.join();
  EXPECT_LT(stop_s, 3.0);
  ASSERT_EQ(answer.first, 200) << answer.second.dump();
  EXPECT_EQ(answer.second["status"], "PENDING");
  std::optional<server::RequestRecord> r = s->server->store().get_request(answer.second["id"]);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, server::JobState::queued);
  EXPECT_EQ(r->attempts, 0);
}

TEST(Http, CancelDuringClaimIsNeverLost) {
  TestServer s({}, /*step_ms=*/50);
  for (int round = 0; round < 5; ++round) {
    auto [code, j] = s.submit({{"prompt", "p"}, {"width", 64}, {"height", 64}, {"samples", 1}, {"num_inference_steps", 40}});
    ASSERT_EQ(code, 200);
    // DELETE straight away: it meets the job queued, being claimed, or just started.
    auto del = s.client().Delete("/generate/v3/status/" + j["id"].get<std::string>(), s.auth());
    ASSERT_TRUE(del);
    json d = json::parse(del->body);
    json done = s.wait_done(j["id"]);
    EXPECT_EQ(done["state"], "cancelled") << d.dump();
  }
}

}  // namespace
}  // namespace fluxpipe::testing
