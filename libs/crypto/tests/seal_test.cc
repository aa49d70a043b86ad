// SealingKey: today's stored layout opens (GCM test case 16 as a sealed record, and records
// made by AeadSeal), many records under one KEK each with its own AAD, and every refusal —
// another KEK, another AAD, a flipped byte, a cut record — with a message that names no byte
// of the KEK or the plaintext.

#include "rkl/crypto/seal.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "gcm_test_vectors.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/aead.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {
namespace {

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }

// GCM test case 16 laid out as a sealed record: nonce ‖ ciphertext ‖ tag.
namespace tc16 = gcm_test_case_16;
constexpr std::string_view kKek = tc16::kKey;
constexpr std::string_view kAad = tc16::kAad;
constexpr std::string_view kPlain = tc16::kPlain;
Bytes Sealed() {
  return H(std::string(tc16::kNonce) + std::string(tc16::kCipher) + std::string(tc16::kTag));
}

// A RandomSource that hands out `bytes` again and again (tests only: a fixed nonce).
RandomSource Repeating(Bytes bytes) {
  return [bytes](std::span<uint8_t> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = bytes[i % bytes.size()];
  };
}

SealingKey Key(std::string_view hex = kKek) { return SealingKey::Create(S(hex)).value(); }

// The refusal names no byte of the KEK or the plaintext, in either case of hex.
void ExpectNoSecretIn(const absl::Status& s) {
  const std::string message(s.message());
  std::string lower = message;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  for (std::string_view secret : {kKek, kPlain}) {
    for (size_t i = 0; i + 8 <= secret.size(); i += 8) {
      EXPECT_EQ(lower.find(secret.substr(i, 8)), std::string::npos) << message;
    }
  }
}

TEST(SealingKey, OpensAKnownAnswerRecordInTheStoredLayout) {
  absl::StatusOr<SecretBytes> opened = Key().Open(H(kAad), Sealed());
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(*opened == S(kPlain));
}

TEST(SealingKey, SealsInTheStoredLayoutWithTheNonceFromItsRandomSource) {
  SealingKey key = SealingKey::Create(S(kKek), Repeating(H(tc16::kNonce))).value();
  absl::StatusOr<Bytes> sealed = key.Seal(H(kAad), S(kPlain));
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  EXPECT_EQ(ToHex(*sealed), ToHex(Sealed()));
}

TEST(SealingKey, OpensWhatAeadSealMadeAndTheOtherWayRound) {
  const SecretBytes kek = RandomSecret(32);
  const SecretBytes record = RandomSecret(48);
  const Bytes aad = {'s', 'n', '1'};
  SealingKey key = SealingKey::Create(kek).value();
  const Bytes by_aead = AeadSeal(kek, record, aad).value();
  EXPECT_TRUE(key.Open(aad, by_aead).value() == record);
  const Bytes by_key = key.Seal(aad, record).value();
  EXPECT_TRUE(AeadOpen(kek, by_key, aad).value() == record);
}

TEST(SealingKey, SealsManyRecordsUnderOneKekEachWithItsOwnAad) {
  SealingKey key = SealingKey::Create(RandomSecret(32)).value();
  std::vector<SecretBytes> records;
  std::vector<Bytes> aads;
  std::vector<Bytes> sealed;
  for (uint8_t i = 0; i < 8; ++i) {
    records.push_back(RandomSecret(16 + i));
    aads.push_back({'r', 'o', 'w', i});
    sealed.push_back(key.Seal(aads.back(), records.back()).value());
    EXPECT_EQ(sealed.back().size(), records.back().size() + SealingKey::kOverhead);
  }
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_TRUE(key.Open(aads[i], sealed[i]).value() == records[i]);
    // A record put in another row's place does not open.
    const size_t other = (i + 1) % records.size();
    EXPECT_EQ(key.Open(aads[other], sealed[i]).status().code(), absl::StatusCode::kUnauthenticated);
  }
  // Fresh nonce each time: the same record sealed twice differs.
  EXPECT_NE(key.Seal(aads[0], records[0]).value(), key.Seal(aads[0], records[0]).value());
  // An empty record and an empty AAD are legal.
  EXPECT_TRUE(key.Open({}, key.Seal({}, SecretBytes()).value()).value().empty());
}

TEST(SealingKey, RefusesAnotherKek) {
  const absl::Status s = Key("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
                             .Open(H(kAad), Sealed())
                             .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  ExpectNoSecretIn(s);
}

TEST(SealingKey, RefusesAnotherAad) {
  const Bytes aad = H(kAad);
  Bytes changed = aad;
  changed[0] ^= 0x01;
  for (const Bytes& other : {changed, Bytes{}, Bytes(aad.begin(), aad.end() - 1)}) {
    const absl::Status s = Key().Open(other, Sealed()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
    ExpectNoSecretIn(s);
  }
}

TEST(SealingKey, RefusesAFlippedByteAnywhere) {
  const Bytes sealed = Sealed();
  const SealingKey key = Key();
  for (size_t i = 0; i < sealed.size(); ++i) {  // nonce, ciphertext and tag
    Bytes bad = sealed;
    bad[i] ^= 0x80;
    const absl::Status s = key.Open(H(kAad), bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << "byte " << i;
    EXPECT_EQ(s.message(), "AES-GCM open failed");
  }
}

TEST(SealingKey, RefusesATruncatedRecord) {
  const Bytes sealed = Sealed();
  const SealingKey key = Key();
  // Long enough to hold a nonce and a tag: it does not authenticate.
  for (size_t cut : {size_t{1}, size_t{16}, sealed.size() - SealingKey::kOverhead}) {
    const absl::Status s = key.Open(H(kAad), Bytes(sealed.begin(), sealed.end() - cut)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << "cut " << cut;
    ExpectNoSecretIn(s);
  }
  // Too short to be a sealed record at all: its length is public, so the error says so.
  const absl::Status s =
      key.Open(H(kAad), Bytes(sealed.begin(), sealed.begin() + SealingKey::kOverhead - 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("minimum is 28"), std::string_view::npos) << s.message();
  ExpectNoSecretIn(s);
}

TEST(SealingKey, CreateRefusesAKekThatIsNot32Bytes) {
  for (size_t n : {size_t{0}, size_t{16}, size_t{31}, size_t{33}}) {
    absl::StatusOr<SealingKey> key = SealingKey::Create(RandomSecret(n));
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(SealingKey::Create(RandomSecret(32), RandomSource()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
