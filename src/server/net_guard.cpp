#include "server/net_guard.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cctype>
#include <cstring>

#include "core/error.h"

namespace fluxpipe::server {
namespace {

bool in_v4(uint32_t a, uint32_t net, int bits) {
  uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  return (a & mask) == (net & mask);
}

uint32_t v4(int a, int b, int c, int d) {
  return (uint32_t(a) << 24) | (uint32_t(b) << 16) | (uint32_t(c) << 8) | uint32_t(d);
}

std::string refused_v4(uint32_t a) {
  struct Range {
    uint32_t net;
    int bits;
    const char* why;
  };
  static const Range ranges[] = {
      {v4(0, 0, 0, 0), 8, "an unspecified/this-network address"},
      {v4(10, 0, 0, 0), 8, "a private address"},
      {v4(100, 64, 0, 0), 10, "a carrier-grade NAT address"},
      {v4(127, 0, 0, 0), 8, "a loopback address"},
      {v4(169, 254, 0, 0), 16, "a link-local/metadata address"},
      {v4(172, 16, 0, 0), 12, "a private address"},
      {v4(192, 0, 0, 0), 24, "an IETF protocol address"},
      {v4(192, 168, 0, 0), 16, "a private address"},
      {v4(198, 18, 0, 0), 15, "a benchmarking address"},
      {v4(224, 0, 0, 0), 4, "a multicast address"},
      {v4(240, 0, 0, 0), 4, "a reserved or broadcast address"},
  };
  for (const Range& r : ranges) {
    if (in_v4(a, r.net, r.bits)) return r.why;
  }
  return {};
}

}  // namespace

HttpUrl parse_http_url(const std::string& url, const std::string& field) {
  auto bad = [&](const std::string& why) -> UserError {
    return UserError("[request] field '" + field + "': " + why);
  };
  for (unsigned char c : url) {
    // No spaces, control characters or non-ASCII bytes: a URL carries them percent-encoded,
    // and raw ones would reach the request line and the logs.
    if (c <= 0x20 || c >= 0x7f) throw bad("must not contain spaces, control characters or raw non-ASCII bytes");
  }
  HttpUrl u;
  size_t rest;
  if (url.rfind("http://", 0) == 0) {
    u.scheme = "http";
    u.port = 80;
    rest = 7;
  } else if (url.rfind("https://", 0) == 0) {
    u.scheme = "https";
    u.port = 443;
    rest = 8;
  } else {
    throw bad("must be an http:// or https:// URL");
  }
  size_t end = url.find_first_of("/?#", rest);
  std::string authority = url.substr(rest, end == std::string::npos ? std::string::npos : end - rest);
  if (authority.find('@') != std::string::npos) throw bad("must not carry user information ('@')");
  std::string port_text;
  if (!authority.empty() && authority[0] == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos) throw bad("has an unclosed IPv6 bracket");
    u.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') throw bad("has junk after the IPv6 address");
      port_text = authority.substr(close + 2);
    }
  } else {
    size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw bad("has no host");
  for (char c : u.host) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '_';
    if (!ok) throw bad("host '" + u.host + "' has characters a host name cannot have");
  }
  if (!port_text.empty() || (authority.size() && authority.back() == ':')) {
    if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos) {
      throw bad("has an invalid port");
    }
    u.port = std::stoi(port_text);
    if (u.port < 1 || u.port > 65535) throw bad("port must be between 1 and 65535");
  }
  return u;
}

std::string refused_address_reason(const sockaddr* addr) {
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    return refused_v4(ntohl(in->sin_addr.s_addr));
  }
  if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    const uint8_t* b = in6->sin6_addr.s6_addr;
    auto embedded_v4 = [&]() { return v4(b[12], b[13], b[14], b[15]); };
    static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64_prefix[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (std::memcmp(b, mapped_prefix, 12) == 0 || std::memcmp(b, nat64_prefix, 12) == 0) {
      return refused_v4(embedded_v4());
    }
    bool all_zero_but_last = true;
    for (int i = 0; i < 15; ++i) all_zero_but_last &= b[i] == 0;
    if (all_zero_but_last && b[15] == 1) return "a loopback address";
    if (all_zero_but_last && b[15] == 0) return "an unspecified address";
    bool first_96_zero = true;
    for (int i = 0; i < 12; ++i) first_96_zero &= b[i] == 0;
    // IPv4-compatible ::a.b.c.d (deprecated; some stacks still route it to the IPv4 address).
    if (first_96_zero) {
      std::string why = refused_v4(embedded_v4());
      return why.empty() ? "an IPv4-compatible address (deprecated)" : why;
    }
    // 6to4 2002:AABB:CCDD::/48 carries the IPv4 address AA.BB.CC.DD.
    if (b[0] == 0x20 && b[1] == 0x02) {
      std::string why = refused_v4(v4(b[2], b[3], b[4], b[5]));
      return why.empty() ? "" : "a 6to4 address of " + why;
    }
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01) {
      return "a local-use NAT64 address (64:ff9b:1::/48)";
    }
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "a site-local address (fec0::/10)";
    if ((b[0] & 0xfe) == 0xfc) return "a unique-local (private) address";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "a link-local address";
    if (b[0] == 0xff) return "a multicast address";
    return {};
  }
  return "an address of an unknown family";
}

void check_webhook_target(const std::string& url, const std::string& field) {
  HttpUrl u = parse_http_url(url, field);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = getaddrinfo(u.host.c_str(), nullptr, &hints, &found);
  if (rc != 0) {
    throw UserError("[request] field '" + field + "': host '" + u.host + "' does not resolve (" + gai_strerror(rc) + ")");
  }
  std::string reason;
  for (addrinfo* a = found; a && reason.empty(); a = a->ai_next) reason = refused_address_reason(a->ai_addr);
  freeaddrinfo(found);
  if (!reason.empty()) {
    throw UserError("[request] field '" + field + "': host '" + u.host + "' resolves to " + reason +
                    ", which webhooks may not reach (the operator can allow it with --allow-private-webhooks)");
  }
}

}  // namespace fluxpipe::server
