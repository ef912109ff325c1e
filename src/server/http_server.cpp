// The event-driven HTTP/1.1 layer (see http_server.h for what it enforces).
//
// One Connection per socket, all of its work on one strand. Its life, per request:
//   wait_request  — async read of the first byte(s) under the idle timeout (no parser yet:
//                   an idle connection holds only a socket and a small buffer);
//   read_header   — the parser under the header timeout, header limit -> 431, a declared
//                   Content-Length over the body limit -> 413;
//   on_header     — route match (404/405), Route::admit on the headers alone, 100-continue;
//   read_body     — under the body timeout; the parser's body limit also bounds chunked bodies;
//   dispatch      — the handler runs; it answers through its Reply now or later;
//   write         — then the next request, or close (Connection: close, draining, errors).
#include "server/http_server.h"

#include <sys/resource.h>

#include <utility>   // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <array>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "core/error.h"

namespace fluxpipe::server::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

// Raises the open-file limit to its hard maximum: every connection is a descriptor.
void raise_file_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
}

}  // namespace

std::string Request::header(std::string_view name) const {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) return h.value;
  }
  return {};
}

bool Request::has_header(std::string_view name) const {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) return true;
  }
  return false;
}

void Response::set_header(std::string name, std::string value) {
  for (Header& h : headers) {
    if (iequals(h.name, name)) {
      h.value = std::move(value);
      return;
    }
  }
  headers.push_back({std::move(name), std::move(value)});
}

class Connection;

struct HttpServer::Impl {
  // Declared before `io`: handlers still queued in `io` own connections, whose destructors
  // use the registry, so the registry must outlive the io_context.
  Options options;
  std::vector<Route> routes;
  std::function<Response(int, const Request&, const std::string&)> on_unrouted;
  std::function<void(int, int)> on_answer;
  Counters counters;
  std::atomic<bool> draining{false};
  std::atomic<bool> accepting{false};
  std::mutex mu;
  std::unordered_map<Connection*, std::weak_ptr<Connection>> connections;
  std::map<std::string, int> per_address;

  asio::io_context io;
  // Keeps io.run() going while no socket operation is pending (every client waiting on a job
  // is such a moment: its answer is posted later, from a waiter).
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::acceptor acceptor{io};
  std::vector<std::thread> threads;

  void accept_next();
  // Registers a connection; false (and nothing registered) when a cap refuses it.
  int admit_connection(Connection* c, const std::string& address, std::weak_ptr<Connection> self);
  void forget_connection(Connection* c, const std::string& address, bool counted);
  void close_idle_connections();
};

// Holds its connection until the answer is sent: a handler that answers later (a waiter)
// keeps the connection alive through its Reply, and the first send() lets go of it.
struct Reply::State {
  std::mutex mu;
  std::shared_ptr<Connection> connection;
  std::atomic<bool> sent{false};
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer::Impl& server, tcp::socket socket) : server_(server), stream_(std::move(socket)) {
    beast::error_code ec;
    tcp::endpoint peer = stream_.socket().remote_endpoint(ec);
    if (!ec) {
      asio::ip::address a = peer.address();
      if (a.is_v6() && a.to_v6().is_v4_mapped()) a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
      address_ = a.to_string();
    }
    stream_.socket().set_option(tcp::no_delay(true), ec);
  }

  ~Connection() { server_.forget_connection(this, address_, counted_); }

  void start() {
    int refusal = server_.admit_connection(this, address_, weak_from_this());
    if (refusal) {
      ++server_.counters.refused_over_cap;
      refuse(refusal, refusal == 503 ? "the server has too many open connections; try again shortly"
                                     : "too many open connections from your address");
      return;
    }
    counted_ = true;
    wait_request();
  }

  // Called on the strand by HttpServer::stop_accepting: an idle connection closes now.
  void close_if_idle() {
    if (state_ == State::idle) close();
  }

  void close() {
    if (state_ == State::closed) return;
    state_ = State::closed;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  auto executor() { return stream_.get_executor(); }

  // On the strand: the handler's answer.
  void write(Response r) {
    if (state_ == State::closed) return;
    bool keep = keep_alive_ && !server_.draining;
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
    res->version(11);
    res->result(static_cast<unsigned>(r.status));
    if (!r.content_type.empty()) res->set(bhttp::field::content_type, r.content_type);
    for (const Header& h : r.headers) res->set(h.name, h.value);
    res->body() = std::move(r.body);
    res->keep_alive(keep);
    res->prepare_payload();
    int status = r.status;
    int route = route_index_;
    state_ = State::writing;
    stream_.expires_after(std::chrono::milliseconds(server_.options.write_timeout_ms));
    auto done = [self = shared_from_this(), res, keep, status, route](beast::error_code ec, size_t) {
      if (self->server_.on_answer) self->server_.on_answer(route, status);
      if (!ec && !keep && self->unread_body_) {
        self->linger();
        return;
      }
      if (ec || !keep) {
        self->close();
        return;
      }
      self->wait_request();
    };
    if (head_) {
      auto sr = std::make_shared<bhttp::response_serializer<bhttp::string_body>>(*res);
      bhttp::async_write_header(stream_, *sr, [sr, done](beast::error_code ec, size_t n) { done(ec, n); });
    } else {
      bhttp::async_write(stream_, *res, done);
    }
  }

 private:
  enum class State { idle, reading, handling, writing, closed };

  // After refusing a request whose body is still arriving: stop sending, then read and drop
  // what the client still sends for a moment, so that closing does not reset the connection
  // before the client has read the answer (a reset can discard it in the client's buffers).
  void linger() {
    state_ = State::writing;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::milliseconds(1000));
    drain(size_t{1} << 20);
  }

  void drain(size_t budget) {
    auto sink = std::make_shared<std::array<char, 16384>>();
    stream_.async_read_some(asio::buffer(*sink), [self = shared_from_this(), sink, budget](beast::error_code ec, size_t n) {
      if (ec || n >= budget) {
        self->close();
        return;
      }
      self->drain(budget - n);
    });
  }

  void wait_request() {
    unread_body_ = false;
    if (server_.draining) {
      close();
      return;
    }
    state_ = State::idle;
    route_index_ = -1;
    if (buffer_.size() > 0) {   // a pipelined request is already here
      read_header();
      return;
    }
    // Small buffers while idle: thousands of idle connections must stay cheap.
    if (buffer_.capacity() > 8192) buffer_ = beast::flat_buffer();
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    stream_.async_read_some(buffer_.prepare(1024), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) {
        if (ec == beast::error::timeout) ++self->server_.counters.timed_out;
        self->close();
        return;
      }
      self->buffer_.commit(n);
      self->read_header();
    });
  }

  void read_header() {
    state_ = State::reading;
    request_ = Request{};
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_.options.max_header_bytes));
    parser_->body_limit(server_.options.max_body_bytes);
    stream_.expires_after(std::chrono::milliseconds(server_.options.header_timeout_ms));
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) {
        self->read_failed(ec);
        return;
      }
      self->on_header();
    });
  }

  void read_failed(beast::error_code ec) {
    if (ec == bhttp::error::header_limit) {
      fail(431, "request headers too large (limit " + std::to_string(server_.options.max_header_bytes) + " bytes)");
    } else if (ec == bhttp::error::body_limit) {
      ++server_.counters.too_large;
      fail(413, "request body too large (limit " + std::to_string(server_.options.max_body_bytes) + " bytes)");
    } else if (ec == beast::error::timeout) {
      // The stream closed the socket when its timer fired: nothing can be sent any more.
      ++server_.counters.timed_out;
      close();
    } else if (ec == bhttp::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
               ec == asio::error::operation_aborted || ec == bhttp::error::partial_message) {
      close();
    } else {
      fail(400, "malformed HTTP request");
    }
  }

  // An answer the layer makes itself; the connection closes after it (anything unread stays unread).
  void fail(int status, const std::string& why) {
    keep_alive_ = false;
    unread_body_ = status == 413;
    head_ = false;
    if (parser_ && request_.path.empty()) {   // the headers may be complete (413 on Content-Length)
      request_.method = std::string(parser_->get().method_string());
      std::string_view target(parser_->get().target().data(), parser_->get().target().size());
      request_.path = std::string(target.substr(0, target.find('?')));
    }
    write(server_.on_unrouted(status, request_, why));
  }

  void refuse(int status, const std::string& why) {
    keep_alive_ = false;
    write(server_.on_unrouted(status, request_, why));
  }

  void on_header() {
    auto& h = parser_->get();
    request_ = Request{};
    request_.method = std::string(h.method_string());
    std::string_view target(h.target().data(), h.target().size());
    size_t q = target.find('?');
    request_.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) request_.query = std::string(target.substr(q + 1));
    for (const auto& f : h) request_.headers.push_back({std::string(f.name_string()), std::string(f.value())});
    request_.remote_address = address_;
    keep_alive_ = h.keep_alive();
    head_ = request_.method == "HEAD";
    std::string method = head_ ? "GET" : request_.method;

    bool path_known = false;
    const Route* route = nullptr;
    std::smatch m;
    for (size_t i = 0; i < server_.routes.size(); ++i) {
      const Route& r = server_.routes[i];
      if (!std::regex_match(request_.path, m, r.compiled)) continue;
      path_known = true;
      if (r.method == method) {
        route = &r;
        route_index_ = static_cast<int>(i);
        request_.matches.assign(m.begin(), m.end());
        break;
      }
    }
    if (!route) {
      Response r = server_.on_unrouted(path_known ? 405 : 404, request_,
                                       path_known ? "method " + request_.method + " not allowed here" : "no such endpoint");
      // Without a body to skip the connection may stay open; with one, close rather than read it.
      if (!parser_->is_done()) keep_alive_ = false, unread_body_ = true;
      write(std::move(r));
      return;
    }
    if (route->admit) {
      if (std::optional<Response> refusal = route->admit(request_)) {
        if (!parser_->is_done()) keep_alive_ = false, unread_body_ = true;
        write(std::move(*refusal));
        return;
      }
    }
    if (parser_->is_done()) {
      dispatch(*route);
      return;
    }
    if (iequals(request_.header("Expect"), "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(stream_, asio::buffer(kContinue), [self = shared_from_this(), route](beast::error_code ec, size_t) {
        if (ec) {
          self->close();
          return;
        }
        self->read_body(*route);
      });
      return;
    }
    read_body(*route);
  }

  void read_body(const Route& route) {
    stream_.expires_after(std::chrono::milliseconds(server_.options.body_timeout_ms));
    bhttp::async_read(stream_, buffer_, *parser_, [self = shared_from_this(), &route](beast::error_code ec, size_t) {
      if (ec) {
        self->read_failed(ec);
        return;
      }
      self->dispatch(route);
    });
  }

  void dispatch(const Route& route) {
    stream_.expires_never();
    state_ = State::handling;
    request_.body = std::move(parser_->get().body());
    parser_.reset();
    auto st = std::make_shared<Reply::State>();
    st->connection = shared_from_this();
    Reply reply(st);
    try {
      route.handle(request_, reply);
    } catch (const std::exception& e) {
      Response r = server_.on_unrouted(500, request_, e.what());
      reply.send(std::move(r));
    }
  }

  HttpServer::Impl& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Request request_;
  std::string address_;
  State state_ = State::idle;
  int route_index_ = -1;
  bool keep_alive_ = true;
  bool head_ = false;
  bool counted_ = false;
  bool unread_body_ = false;   // the answer went out before the request's body was read
};

Reply::Reply(std::shared_ptr<State> state) : state_(std::move(state)) {}

void Reply::send(Response response) const {
  if (state_->sent.exchange(true)) return;
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lock(state_->mu);
    c = std::move(state_->connection);
  }
  if (!c) return;
  asio::post(c->executor(), [c, r = std::move(response)]() mutable { c->write(std::move(r)); });
}

bool Reply::sent() const { return state_->sent.load(); }

int HttpServer::Impl::admit_connection(Connection* c, const std::string& address, std::weak_ptr<Connection> self) {
  std::lock_guard lock(mu);
  if (static_cast<int64_t>(connections.size()) >= options.max_connections) return 503;
  if (options.max_connections_per_address > 0 && per_address[address] >= options.max_connections_per_address) {
    if (per_address[address] == 0) per_address.erase(address);
    return 429;
  }
  ++per_address[address];
  connections.emplace(c, std::move(self));
  counters.open = static_cast<int64_t>(connections.size());
  return 0;
}

void HttpServer::Impl::forget_connection(Connection* c, const std::string& address, bool counted) {
  if (!counted) return;
  std::lock_guard lock(mu);
  connections.erase(c);
  if (auto it = per_address.find(address); it != per_address.end() && --it->second <= 0) per_address.erase(it);
  counters.open = static_cast<int64_t>(connections.size());
}

void HttpServer::Impl::accept_next() {
  acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
    if (!accepting) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // Out of descriptors (EMFILE) or the like: pause briefly instead of spinning.
      auto timer = std::make_shared<asio::steady_timer>(io, std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) {
        if (accepting) accept_next();
      });
      return;
    }
    ++counters.accepted;
    auto c = std::make_shared<Connection>(*this, std::move(socket));
    asio::post(c->executor(), [c] { c->start(); });
    accept_next();
  });
}

void HttpServer::Impl::close_idle_connections() {
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(mu);
    for (auto& [ptr, weak] : connections) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live) asio::post(c->executor(), [c] { c->close_if_idle(); });
}

HttpServer::HttpServer(Options options, std::vector<Route> routes,
                       std::function<Response(int, const Request&, const std::string&)> on_unrouted,
                       std::function<void(int, int)> on_answer)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  impl_->routes = std::move(routes);
  for (Route& r : impl_->routes) r.compiled = std::regex(r.pattern);
  impl_->on_unrouted = std::move(on_unrouted);
  impl_->on_answer = std::move(on_answer);
}

HttpServer::~HttpServer() { stop(0); }

int HttpServer::bind(const std::string& host, int port) {
  Impl& s = *impl_;
  beast::error_code ec;
  asio::ip::address address = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) throw UserError("[serve] --listen: '" + host + "' is not an IP address");
  tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  s.acceptor.open(endpoint.protocol(), ec);
  if (!ec) s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(endpoint, ec);
  if (!ec) s.acceptor.listen(s.options.backlog, ec);
  if (ec) throw IoError("[serve] cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  return s.acceptor.local_endpoint().port();
}

void HttpServer::start() {
  Impl& s = *impl_;
  raise_file_limit();
  s.accepting = true;
  s.work.emplace(s.io.get_executor());
  s.accept_next();
  for (int i = 0; i < std::max(1, s.options.threads); ++i) {
    s.threads.emplace_back([&s] { s.io.run(); });
  }
}

void HttpServer::stop_accepting() {
  Impl& s = *impl_;
  if (!s.accepting.exchange(false) && s.draining) return;
  s.draining = true;
  asio::post(s.io, [&s] {
    beast::error_code ec;
    s.acceptor.close(ec);
  });
  s.close_idle_connections();
}

void HttpServer::stop(int64_t grace_ms) {
  Impl& s = *impl_;
  if (s.threads.empty()) return;
  stop_accepting();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  while (s.counters.open > 0 && std::chrono::steady_clock::now() < deadline) {
    s.close_idle_connections();   // those that finished an answer since
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(s.mu);
    for (auto& [ptr, weak] : s.connections) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live) asio::post(c->executor(), [c] { c->close(); });
  live.clear();
  s.work.reset();
  s.io.stop();
  for (std::thread& t : s.threads) t.join();
  s.threads.clear();
}

const Counters& HttpServer::counters() const { return impl_->counters; }

}  // namespace fluxpipe::server::http
