// fluxpipe server: the HTTP/1.1 layer — event-driven (Boost.Asio + Boost.Beast), so an open
// connection costs a socket and a few hundred bytes, never a thread.
//
// What it enforces before any handler runs, for every client, keyed or not:
//  - a total connection cap (503 beyond it) and an optional per-address cap (429);
//  - an idle timeout between requests on a keep-alive connection, a header timeout once a
//    request has started, and a body timeout;
//  - a header size limit (431) and a body limit (413) that holds for Content-Length and
//    chunked bodies alike: the parser stops at the limit, so nothing beyond it is buffered;
//  - Route::admit runs on the headers alone (authentication), so an unauthenticated client's
//    body is never read at all;
//  - TCP_NODELAY on every connection (a response leaves in one go, no delayed-ACK stall).
//
// Handlers answer through a Reply, now or later and from any thread: a handler that waits for
// a job keeps its Reply and returns, holding no thread while it waits.
//
// Ownership: HttpServer owns its sockets and io threads. Thread-safety: bind/start/stop from
// the owning thread; Reply::send from any thread, once (later calls are ignored).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace fluxpipe::server::http {

struct Header {
  std::string name;
  std::string value;
};

struct Request {
  std::string method;                 // "GET", "POST", ...
  std::string path;                   // the target without its query string
  std::string query;                  // after '?', undecoded
  std::vector<std::string> matches;   // the route's captures; [0] is the whole path
  std::vector<Header> headers;
  std::string body;
  std::string remote_address;         // the peer's IP address, as text

  // First header named `name` (case-insensitive), or "".
  std::string header(std::string_view name) const;
  bool has_header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<Header> headers;
  void set_header(std::string name, std::string value);
};

// The one answer to one request. Copyable (shared); the first send() wins.
class Reply {
 public:
  struct State;
  explicit Reply(std::shared_ptr<State> state);
  void send(Response response) const;
  bool sent() const;

 private:
  std::shared_ptr<State> state_;
};

struct Route {
  std::string method;                 // GET also answers HEAD
  std::string pattern;                // a std::regex matched against the whole path
  // Optional: judges the headers before the body is read. A Response refuses the request
  // (the connection closes unread); nullopt lets it through.
  std::function<std::optional<Response>(const Request&)> admit;
  std::function<void(Request&, Reply)> handle;
  std::regex compiled;                // filled by HttpServer
};

struct Options {
  int threads = 2;                    // io threads (handlers run on them; keep handlers short)
  size_t max_body_bytes = 64 * 1024;
  size_t max_header_bytes = 16 * 1024;
  int max_connections = 20000;
  int max_connections_per_address = 0;   // 0: no per-address cap
  int64_t idle_timeout_ms = 60000;    // keep-alive connection without a request in progress
  int64_t header_timeout_ms = 10000;  // from a request's first byte to its last header byte
  int64_t body_timeout_ms = 30000;    // reading the body
  int64_t write_timeout_ms = 30000;
  int backlog = 4096;
};

struct Counters {
  std::atomic<int64_t> open{0};
  std::atomic<int64_t> accepted{0};
  std::atomic<int64_t> refused_over_cap{0};
  std::atomic<int64_t> timed_out{0};
  std::atomic<int64_t> too_large{0};
};

class HttpServer {
 public:
  // `on_unrouted(status, req)` builds the answer for requests no route takes (404, 405) and
  // for those the layer refuses (400, 408, 413, 429, 431, 503): the API keeps one error shape.
  // `on_answer(route_index or -1, status)` is called once per answer, for metrics.
  HttpServer(Options options, std::vector<Route> routes,
             std::function<Response(int status, const Request& req, const std::string& why)> on_unrouted,
             std::function<void(int route, int status)> on_answer);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; returns the port (port 0: any free one). Throws IoError naming the address.
  int bind(const std::string& host, int port);
  void start();
  // Stops accepting; every later answer carries Connection: close and idle connections close now.
  void stop_accepting();
  // Closes every connection within `grace_ms` (those still busy are cut) and joins the threads.
  void stop(int64_t grace_ms = 2000);

  const Counters& counters() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace fluxpipe::server::http
