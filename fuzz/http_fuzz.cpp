// libFuzzer target: the HTTP/1.1 framing of the server (server/http_server.cpp on Beast).
// Each input is written raw to a fresh connection of a real HttpServer on 127.0.0.1 — request
// lines, headers, Content-Length and chunked bodies, pipelined requests — then the write side
// is shut. The server must answer only well-formed HTTP/1.1 responses and close within a
// second of the client's EOF (never hang, never crash: ASan and UBSan watch); and every 128
// inputs a fresh, plain request must still be answered 200 (no leaked connection or thread).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "server/http_server.h"

namespace {

using namespace fluxpipe::server::http;

int server_port() {
  static std::unique_ptr<HttpServer> server;
  static int port = 0;
  if (server) return port;
  Options o;
  o.threads = 2;
  o.max_body_bytes = 4096;   // small limits, so inputs reach them
  o.max_header_bytes = 2048;
  o.header_timeout_ms = 2000;
  o.body_timeout_ms = 2000;
  std::vector<Route> routes;
  routes.push_back({"GET", "/ping", {}, [](Request&, Reply r) { r.send({200, "text/plain", "pong", {}}); }, {}});
  // Admitted on its headers alone: without the key the body is never read.
  routes.push_back({"POST", "/keyed/([a-z]{1,8})",
                    [](const Request& q) -> std::optional<Response> {
                      if (q.header("X-Key") == "k") return std::nullopt;
                      return Response{401, "text/plain", "no key", {}};
                    },
                    [](Request& q, Reply r) { r.send({200, "text/plain", std::to_string(q.body.size()), {}}); }, {}});
  // Answered later from another thread, as the sync wait does.
  routes.push_back({"POST", "/later", {},
                    [](Request& q, Reply r) {
                      std::thread([r, n = q.body.size()] {
                        std::this_thread::sleep_for(std::chrono::microseconds(200));
                        r.send({200, "text/plain", std::to_string(n), {}});
                      }).detach();
                    },
                    {}});
  server = std::make_unique<HttpServer>(
      o, std::move(routes), [](int status, const Request&, const std::string& why) { return Response{status, "text/plain", why, {}}; },
      [](int, int) {});
  port = server->bind("127.0.0.1", 0);
  server->start();
  return port;
}

int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::fprintf(stderr, "http_fuzz: cannot connect to the server\n");
    std::abort();
  }
  return fd;
}

// Writes `data`, shuts the write side, reads until the server closes. Aborts when the server
// neither closes nor answers for a second after EOF (a hang).
std::string exchange(int port, const uint8_t* data, size_t size) {
  int fd = connect_to(port);
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break;   // the server closed early (a refused request): fine
    sent += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
  std::string reply;
  char buf[8192];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r == 0) {
      std::fprintf(stderr, "http_fuzz: the server neither answered nor closed within 1 s of EOF\n");
      std::abort();
    }
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return reply;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int inputs = 0;
  int port = server_port();
  std::string reply = exchange(port, data, size);
  if (!reply.empty() && reply.rfind("HTTP/1.1 ", 0) != 0) {
    std::fprintf(stderr, "http_fuzz: the answer does not start with a status line\n");
    std::abort();
  }
  if (++inputs % 128 == 0) {
    static const char ping[] = "GET /ping HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n";
    std::string ok = exchange(port, reinterpret_cast<const uint8_t*>(ping), sizeof ping - 1);
    if (ok.rfind("HTTP/1.1 200", 0) != 0) {
      std::fprintf(stderr, "http_fuzz: a plain request is no longer answered: %s\n", ok.substr(0, 80).c_str());
      std::abort();
    }
  }
  return 0;
}
