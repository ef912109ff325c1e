// AWS Signature Version 4 (S3): AWS's published examples, and botocore (Debian's
// python3-botocore, fixed clock, nothing sent) on requests with odd keys, queries and tokens.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "server/crypto.h"
#include "server/sigv4.h"
#include "test_util.h"

namespace fluxpipe::server {
namespace {

using nlohmann::json;

const char* kEmptySha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

AwsCredentials example_credentials() {
  AwsCredentials c;
  c.access_key_id = "AKIAIOSFODNN7EXAMPLE";
  c.secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
  c.region = "us-east-1";
  return c;
}

// "Example: GET Object" of the S3 documentation's SigV4 header examples.
TEST(SigV4, MatchesAwsGetObjectExample) {
  SignedRequestInput r;
  r.method = "GET";
  r.path = "/test.txt";
  r.headers = {{"Host", "examplebucket.s3.amazonaws.com"}, {"Range", "bytes=0-9"}};
  r.payload_sha256 = kEmptySha;
  auto h = sigv4_sign(r, example_credentials(), "20130524T000000Z");
  EXPECT_EQ(h["Authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(h["x-amz-date"], "20130524T000000Z");
  EXPECT_EQ(h["x-amz-content-sha256"], kEmptySha);
}

// "Example: PUT Object": a key with '$', a Date header and a storage-class header signed too.
TEST(SigV4, MatchesAwsPutObjectExample) {
  SignedRequestInput r;
  r.method = "PUT";
  r.path = "/test$file.text";
  r.headers = {{"Host", "examplebucket.s3.amazonaws.com"},
               {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
               {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
  r.payload_sha256 = sha256_hex("Welcome to Amazon S3.");
  EXPECT_EQ(r.payload_sha256, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  auto h = sigv4_sign(r, example_credentials(), "20130524T000000Z");
  EXPECT_EQ(h["Authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
            "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

TEST(SigV4, CanonicalRequestEncodesPathAndSortsQuery) {
  SignedRequestInput r;
  r.method = "GET";
  r.path = "/bucket/a b/ü+x.png";
  r.query = {{"prefix", "J y"}, {"max-keys", "2"}};
  r.headers = {{"HOST", "  s3.local:9000 "}, {"X-Custom", "a   b  "}};
  r.payload_sha256 = kEmptySha;
  std::string c = sigv4_canonical_request(r, "20200101T000000Z");
  EXPECT_EQ(c,
            "GET\n/bucket/a%20b/%C3%BC%2Bx.png\nmax-keys=2&prefix=J%20y\n"
            "host:s3.local:9000\nx-amz-content-sha256:" + std::string(kEmptySha) + "\nx-amz-date:20200101T000000Z\n"
            "x-custom:a b\n\nhost;x-amz-content-sha256;x-amz-date;x-custom\n" + kEmptySha);
  EXPECT_EQ(amz_date_of(1369353600), "20130524T000000Z");
}

// The same requests signed by botocore at the same instant must carry the same Authorization.
TEST(SigV4, AgreesWithBotocore) {
  if (std::system("/usr/bin/python3 -c 'import botocore' 2>/dev/null") != 0) {
    const char* ci = std::getenv("CI");
    if (ci && std::string(ci) == "true") FAIL() << "CI=true but python3-botocore is not installed";
    GTEST_SKIP() << "python3-botocore not installed (scripts/deps.sh installs it)";
  }
  struct Case {
    std::string method, host, path, query_string, body, token;
    std::vector<std::pair<std::string, std::string>> query;
    std::map<std::string, std::string> headers;
  };
  std::vector<Case> cases = {
      {"PUT", "127.0.0.1:4569", "/fluxpipe/images/0123abcd/x-1.png", "", "PNG bytes stand-in", "", {}, {}},
      {"GET", "s3.example.internal", "/bucket/a b/c$d~e.png", "", "", "", {}, {{"Range", "bytes=0-99"}}},
      {"GET", "127.0.0.1:4569", "/bucket", "list-type=2&prefix=img%2Fx%20y", "", "", {{"list-type", "2"}, {"prefix", "img/x y"}}, {}},
      {"DELETE", "127.0.0.1:4569", "/bucket/k", "", "", "FQoGZXIvYXdzEXAMPLETOKEN", {}, {}},
  };
  json spec = {{"time", "20261201T101112Z"}, {"cases", json::array()}};
  for (const Case& c : cases) {
    json headers = json::object();
    for (const auto& [k, v] : c.headers) headers[k] = v;
    spec["cases"].push_back({{"method", c.method},
                             {"url", "http://" + c.host + sigv4_uri_encode(c.path, true) +
                                         (c.query_string.empty() ? "" : "?" + c.query_string)},
                             {"headers", headers}, {"body", c.body}, {"access_key", "AKIDEXAMPLE"},
                             {"secret_key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}, {"token", c.token},
                             {"region", "eu-central-1"}});
  }
  fluxpipe::testing::TempDir dir;
  { std::ofstream(dir.path() + "/in.json") << spec.dump(); }
  std::string cmd = std::string("/usr/bin/python3 ") + FLUXPIPE_SOURCE_DIR + "/tests/support/botocore_sign.py < " +
                    dir.path() + "/in.json > " + dir.path() + "/out.json";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  json got = json::parse(std::ifstream(dir.path() + "/out.json"));
  ASSERT_EQ(got.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SignedRequestInput r;
    r.method = c.method;
    r.path = c.path;
    r.query = c.query;
    r.headers = c.headers;
    r.headers["host"] = c.host;
    r.payload_sha256 = sha256_hex(c.body);
    AwsCredentials creds;
    creds.access_key_id = "AKIDEXAMPLE";
    creds.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    creds.session_token = c.token;
    creds.region = "eu-central-1";
    auto ours = sigv4_sign(r, creds, "20261201T101112Z");
    // botocore writes "Credential=..., SignedHeaders=..., Signature=..." as we do.
    EXPECT_EQ(ours["Authorization"], got[i]["authorization"].get<std::string>()) << "case " << i << ": " << c.method
                                                                                  << " " << c.path;
  }
}

}  // namespace
}  // namespace fluxpipe::server
