// Webhook targets: URL syntax and the refused address ranges.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "server/net_guard.h"
#include "server/webhook.h"

namespace fluxpipe::server {
namespace {

std::string reason_for(const std::string& text) {
  sockaddr_storage ss{};
  if (text.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, text.c_str(), &a->sin6_addr), 1) << text;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, text.c_str(), &a->sin_addr), 1) << text;
  }
  return refused_address_reason(reinterpret_cast<sockaddr*>(&ss));
}

TEST(NetGuard, RefusesInternalAddresses) {
  for (const char* a : {"127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                        "169.254.169.254", "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::",
                        "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                        "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::", "::127.0.0.1", "::10.0.0.1",
                        "::8.8.8.8", "64:ff9b:1::1", "fec0::1", "feff::1"}) {
    EXPECT_FALSE(reason_for(a).empty()) << a;
  }
}

TEST(NetGuard, UrlsWithSpacesOrControlCharactersAreRefused) {
  for (const char* u : {"http://example.com/a\r\nX-Injected: 1", "http://example.com/a b", "http://exa mple.com/",
                        "http://example.com/\t", "http://example.com/\x7f", "http://example.com/caf\xc3\xa9"}) {
    EXPECT_THROW(parse_http_url(u, "webhook"), UserError) << u;
  }
  EXPECT_NO_THROW(parse_http_url("https://example.com/hook?token=a%20b", "webhook"));
}

TEST(NetGuard, LogsSeeSchemeAndHostOnly) {
  EXPECT_EQ(redact_url("https://user:pw@hooks.example.com:8443/p/secret?token=abc"), "https://hooks.example.com:8443/...");
  EXPECT_EQ(redact_url("http://example.com"), "http://example.com");
}

TEST(NetGuard, AllowsPublicAddresses) {
  for (const char* a : {"8.8.8.8", "1.1.1.1", "172.32.0.1", "172.15.255.255", "192.169.0.1", "100.63.255.255",
                        "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"}) {
    EXPECT_TRUE(reason_for(a).empty()) << a << ": " << reason_for(a);
  }
}

TEST(NetGuard, ParsesHttpUrls) {
  HttpUrl u = parse_http_url("https://hooks.example.com:8443/path?q=1", "webhook");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.host, "hooks.example.com");
  EXPECT_EQ(u.port, 8443);
  EXPECT_EQ(parse_http_url("http://[::1]:9000/x", "webhook").host, "::1");
  EXPECT_EQ(parse_http_url("http://example.com", "webhook").port, 80);
  for (const char* bad : {"ftp://x", "http://", "http://user@host/", "http://host:0/", "http://host:99999/",
                          "http://host:abc/", "http://ho st/", "http://[::1/", "file:///etc/passwd"}) {
    EXPECT_THROW(parse_http_url(bad, "webhook"), UserError) << bad;
  }
}

TEST(NetGuard, CheckResolvesAndRefuses) {
  EXPECT_THROW(check_webhook_target("http://127.0.0.1:9/x", "webhook"), UserError);
  EXPECT_THROW(check_webhook_target("http://localhost/x", "webhook"), UserError);
  EXPECT_THROW(check_webhook_target("http://169.254.169.254/latest/meta-data", "webhook"), UserError);
  EXPECT_THROW(check_webhook_target("http://[::1]/", "webhook"), UserError);
  try {
    check_webhook_target("http://10.0.0.5/", "webhook");
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'webhook'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("private"), std::string::npos);
  }
}

}  // namespace
}  // namespace fluxpipe::server
