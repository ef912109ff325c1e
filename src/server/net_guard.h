// fluxpipe server: keeping user-supplied webhook URLs away from the server's own network.
//
// Refused unless the operator allows private targets: loopback, unspecified, private
// (RFC 1918, IPv6 unique-local), carrier-grade NAT (which holds some clouds' metadata
// service), link-local (169.254.0.0/16 holds the common metadata address), multicast,
// reserved and broadcast ranges; IPv4-mapped and NAT64 IPv6 addresses are judged by the
// IPv4 address inside.
// Thread-safety: stateless.
#pragma once

#include <sys/socket.h>

#include <string>
#include <vector>

namespace fluxpipe::server {

struct HttpUrl {
  std::string scheme;   // "http" or "https"
  std::string host;     // without brackets for IPv6 literals
  int port = 0;
};

// Throws UserError naming `field` when the URL is not http(s)://host[:port][/...].
HttpUrl parse_http_url(const std::string& url, const std::string& field);

// Why the address must not be reached, or an empty string when it may.
std::string refused_address_reason(const sockaddr* addr);

// Resolves the URL's host and throws UserError naming `field` when it does not resolve
// or when any address it resolves to is refused.
void check_webhook_target(const std::string& url, const std::string& field);

}  // namespace fluxpipe::server
