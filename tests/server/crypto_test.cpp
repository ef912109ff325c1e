// Keys and webhook signatures.
#include <gtest/gtest.h>

#include "core/error.h"
#include "server/crypto.h"
#include "server/keys.h"
#include "server/webhook.h"
#include "test_util.h"

namespace fluxpipe::server {
namespace {

TEST(Crypto, Base64RoundTripAndErrors) {
  for (std::string s : {"", "a", "ab", "abc", "abcd", "hello world!"}) {
    std::vector<uint8_t> bytes(s.begin(), s.end());
    EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes) << s;
  }
  EXPECT_EQ(base64_encode({'f', 'o', 'o', 'b'}), "Zm9vYg==");
  EXPECT_THROW(base64_decode("abc"), UserError);
  EXPECT_THROW(base64_decode("!!!!"), UserError);
}

TEST(Crypto, Sha256KnownValue) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// The example of the Standard Webhooks specification (secret, id, timestamp, payload ->
// signature), so receivers using any Standard Webhooks library accept our signatures.
TEST(WebhookSigner, MatchesTheStandardWebhooksExample) {
  WebhookSigner signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  auto h = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, R"({"test": 2432232314})");
  EXPECT_EQ(h["webhook-id"], "msg_p5jXN8AQM9LWM0D4loKWxJek");
  EXPECT_EQ(h["webhook-timestamp"], "1614265330");
  EXPECT_EQ(h["webhook-signature"], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(WebhookSigner, RejectsMalformedSecrets) {
  EXPECT_THROW(WebhookSigner("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), UserError);
  EXPECT_THROW(WebhookSigner("whsec_c2hvcnQ="), UserError);   // 5 bytes
  EXPECT_NO_THROW(WebhookSigner(WebhookSigner::generate_secret()));
}

TEST(Keys, MadeKeysAuthenticateAndRevokedOnesDoNot) {
  fluxpipe::testing::TempDir dir;
  auto store = open_sqlite_store(dir.path() + "/db");
  NewKey a = make_api_key("a", 1);
  NewKey b = make_api_key("b", 2);
  EXPECT_EQ(a.secret.rfind("fpk_", 0), 0u);
  EXPECT_EQ(a.secret.size(), 52u);
  EXPECT_NE(a.record.hash_hex, a.secret);   // only the hash is stored
  store->add_key(a.record);
  store->add_key(b.record);
  KeyRing ring(*store, {"env-key-1"}, std::chrono::milliseconds(0));
  EXPECT_EQ(ring.authenticate(a.secret), a.record.id);
  EXPECT_EQ(ring.authenticate(b.secret), b.record.id);
  EXPECT_TRUE(ring.authenticate("env-key-1"));
  EXPECT_FALSE(ring.authenticate(a.secret + "x"));
  EXPECT_FALSE(ring.authenticate(""));
  EXPECT_FALSE(ring.authenticate(a.record.hash_hex));
  store->revoke_key(a.record.id);
  EXPECT_FALSE(ring.authenticate(a.secret));
  EXPECT_TRUE(ring.authenticate(b.secret));
}

}  // namespace
}  // namespace fluxpipe::server
