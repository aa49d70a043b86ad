// AES-256-GCM record sealing: the McGrew–Viega / NIST GCM test case 16 known answer (also
// re-checked with Python's cryptography package), round trips, and every tampering that must
// fail with one undetailed UNAUTHENTICATED.

#include "rkl/crypto/aead.h"

#include <gtest/gtest.h>

#include <string_view>

#include "gcm_test_vectors.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {
namespace {

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }

using gcm_test_case_16::kAad;
using gcm_test_case_16::kCipher;
using gcm_test_case_16::kKey;
using gcm_test_case_16::kNonce;
using gcm_test_case_16::kPlain;
using gcm_test_case_16::kTag;

TEST(Aead, GcmTestCase16KnownAnswer) {
  absl::StatusOr<Bytes> sealed =
      AeadSealWithNonceForSelfTest(S(kKey), H(kNonce), S(kPlain), H(kAad));
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_EQ(ToHex(*sealed),
            ToHex(H(std::string(kNonce) + std::string(kCipher) + std::string(kTag))));
  absl::StatusOr<SecretBytes> opened = AeadOpen(S(kKey), *sealed, H(kAad));
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(*opened == S(kPlain));
}

TEST(Aead, RoundTripWithRandomNonces) {
  const SecretBytes key = RandomSecret(32);
  const SecretBytes record = RandomSecret(32);
  const Bytes aad = {'i', 'd', 'x', '7'};
  const Bytes a = AeadSeal(key, record, aad).value();
  const Bytes b = AeadSeal(key, record, aad).value();
  EXPECT_EQ(a.size(), kAeadNonceSize + record.size() + kAeadTagSize);
  EXPECT_NE(a, b);  // fresh nonce each time
  EXPECT_TRUE(AeadOpen(key, a, aad).value() == record);
  EXPECT_TRUE(AeadOpen(key, b, aad).value() == record);
  // Empty plaintext and empty AAD are legal.
  const Bytes empty = AeadSeal(key, SecretBytes(), {}).value();
  EXPECT_TRUE(AeadOpen(key, empty, {}).value().empty());
}

TEST(Aead, EveryTamperingIsUnauthenticatedWithoutDetail) {
  const SecretBytes key = RandomSecret(32);
  const Bytes aad = {1, 2, 3, 4, 5};
  const Bytes sealed = AeadSeal(key, RandomSecret(32), aad).value();
  std::vector<absl::Status> failures;
  for (size_t i : {size_t{0}, kAeadNonceSize, sealed.size() - 1}) {  // nonce, ciphertext, tag
    Bytes bad = sealed;
    bad[i] ^= 0x01;
    failures.push_back(AeadOpen(key, bad, aad).status());
  }
  Bytes bad_aad = aad;
  bad_aad[4] ^= 0x01;
  failures.push_back(AeadOpen(key, sealed, bad_aad).status());
  failures.push_back(AeadOpen(key, sealed, {}).status());
  failures.push_back(AeadOpen(RandomSecret(32), sealed, aad).status());
  Bytes truncated(sealed.begin(), sealed.end() - 1);
  failures.push_back(AeadOpen(key, truncated, aad).status());
  for (const absl::Status& s : failures) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(s.message(), "AES-GCM open failed");
  }
}

TEST(Aead, RejectsMalformedArguments) {
  const SecretBytes key = RandomSecret(32);
  EXPECT_EQ(AeadOpen(key, Bytes(27, 0), {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AeadSeal(RandomSecret(16), RandomSecret(16), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AeadOpen(RandomSecret(16), Bytes(40, 0), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AeadSealWithNonceForSelfTest(key, Bytes(8, 0), RandomSecret(16), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
