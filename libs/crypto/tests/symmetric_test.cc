// Key algorithms, randomness, raw cipher modes, CMAC verification and KWP: round trips and the
// ways each one must refuse input.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string_view>

#include "rkl/common/hex.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {
namespace {

using ::testing::HasSubstr;

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }

// ---- KeyAlgorithm ----
TEST(KeyAlgorithm, WireCodesNamesAndSizes) {
  EXPECT_EQ(KeyAlgorithmCode(KeyAlgorithm::kTdes2), 0x01);
  EXPECT_EQ(KeyAlgorithmCode(KeyAlgorithm::kAes128), 0x11);
  EXPECT_EQ(KeyAlgorithmCode(KeyAlgorithm::kAes256), 0x13);
  for (KeyAlgorithm a : {KeyAlgorithm::kTdes2, KeyAlgorithm::kAes128, KeyAlgorithm::kAes256}) {
    EXPECT_EQ(KeyAlgorithmFromCode(KeyAlgorithmCode(a)).value(), a);
    EXPECT_EQ(KeyAlgorithmFromName(KeyAlgorithmName(a)).value(), a);
  }
  EXPECT_EQ(KeyAlgorithmName(KeyAlgorithm::kTdes2), "TDES2");
  EXPECT_EQ(KeyAlgorithmName(KeyAlgorithm::kAes128), "AES128");
  EXPECT_EQ(KeyAlgorithmName(KeyAlgorithm::kAes256), "AES256");
  EXPECT_EQ(KeyLength(KeyAlgorithm::kTdes2), 16u);
  EXPECT_EQ(KeyLength(KeyAlgorithm::kAes128), 16u);
  EXPECT_EQ(KeyLength(KeyAlgorithm::kAes256), 32u);
  EXPECT_EQ(BlockSize(KeyAlgorithm::kTdes2), 8u);
  EXPECT_EQ(BlockSize(KeyAlgorithm::kAes256), 16u);
  EXPECT_EQ(FamilyOf(KeyAlgorithm::kTdes2), CipherFamily::kTdes);
  EXPECT_EQ(FamilyOf(KeyAlgorithm::kAes128), CipherFamily::kAes);
}

TEST(KeyAlgorithm, RejectsUnknownCodeAndName) {
  for (uint8_t code : {0x00, 0x02, 0x12, 0x14, 0xFF}) {
    absl::StatusOr<KeyAlgorithm> a = KeyAlgorithmFromCode(code);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THAT(KeyAlgorithmFromCode(0x12).status().message(), HasSubstr("0x12"));
  for (std::string_view name : {"", "aes128", "AES192", "TDES3", "AES128 "}) {
    EXPECT_EQ(KeyAlgorithmFromName(name).status().code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
}

// ---- Random ----
TEST(Random, SizesAndDistinctOutputs) {
  EXPECT_EQ(RandomBytes(0).size(), 0u);
  EXPECT_EQ(RandomBytes(33).size(), 33u);
  EXPECT_EQ(RandomSecret(32).size(), 32u);
  EXPECT_NE(RandomBytes(16), RandomBytes(16));
  EXPECT_FALSE(RandomSecret(16) == RandomSecret(16));
}

TEST(Random, GenerateKeyHonoursAlgorithmRules) {
  std::set<Bytes> seen;
  for (int i = 0; i < 50; ++i) {
    SecretBytes tdes = GenerateKey(KeyAlgorithm::kTdes2);
    ASSERT_EQ(tdes.size(), 16u);
    EXPECT_TRUE(HasOddParity(tdes));
    EXPECT_FALSE(tdes.Sub(0, 8) == tdes.Sub(8, 8));
    seen.insert(Bytes(tdes.RevealSecret().begin(), tdes.RevealSecret().end()));
  }
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_EQ(GenerateKey(KeyAlgorithm::kAes128).size(), 16u);
  EXPECT_EQ(GenerateKey(KeyAlgorithm::kAes256).size(), 32u);
}

TEST(Random, Parity) {
  Bytes k = H("0023456789ABCDEFFEDCBA9876543210");
  EXPECT_FALSE(HasOddParity(k));
  SetOddParity(k);
  EXPECT_TRUE(HasOddParity(k));
  EXPECT_EQ(ToHex(k), "0123456789ABCDEFFEDCBA9876543210");
}

// ---- Cipher ----
struct CipherCase {
  CipherFamily family;
  size_t key_length;
};

class CipherRoundTrip : public ::testing::TestWithParam<CipherCase> {};

TEST_P(CipherRoundTrip, EcbAndCbc) {
  const CipherCase c = GetParam();
  const SecretBytes key = RandomSecret(c.key_length);
  const size_t block = BlockSize(c.family);
  const Bytes iv = RandomBytes(block);
  const SecretBytes plain = RandomSecret(block * 3);
  for (BlockMode mode : {BlockMode::kEcb, BlockMode::kCbc}) {
    const std::span<const uint8_t> use_iv =
        mode == BlockMode::kCbc ? std::span<const uint8_t>(iv) : std::span<const uint8_t>();
    absl::StatusOr<Bytes> ct = Encrypt(c.family, mode, key, use_iv, plain);
    ASSERT_TRUE(ct.ok()) << ct.status();
    EXPECT_EQ(ct->size(), plain.size());
    absl::StatusOr<SecretBytes> back = DecryptToSecret(c.family, mode, key, use_iv, *ct);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(*back == plain);
    absl::StatusOr<Bytes> back_public = Decrypt(c.family, mode, key, use_iv, *ct);
    ASSERT_TRUE(back_public.ok());
    EXPECT_TRUE(SecretBytes::CopyOf(*back_public) == plain);
    // A different key does not give the plaintext back.
    absl::StatusOr<SecretBytes> wrong =
        DecryptToSecret(c.family, mode, RandomSecret(c.key_length), use_iv, *ct);
    ASSERT_TRUE(wrong.ok());
    EXPECT_FALSE(*wrong == plain);
  }
}

INSTANTIATE_TEST_SUITE_P(AllKeySizes, CipherRoundTrip,
                         ::testing::Values(CipherCase{CipherFamily::kAes, 16},
                                           CipherCase{CipherFamily::kAes, 24},
                                           CipherCase{CipherFamily::kAes, 32},
                                           CipherCase{CipherFamily::kTdes, 16},
                                           CipherCase{CipherFamily::kTdes, 24}));

TEST(Cipher, Tdes2KeyEqualsThreeKeyWithK3EqualK1) {
  const SecretBytes k2 = S("0123456789ABCDEFFEDCBA9876543210");
  const SecretBytes k3 = S("0123456789ABCDEFFEDCBA98765432100123456789ABCDEF");
  const Bytes pt = H("00112233445566778899AABBCCDDEEFF");
  EXPECT_EQ(Encrypt(CipherFamily::kTdes, BlockMode::kEcb, k2, {}, pt).value(),
            Encrypt(CipherFamily::kTdes, BlockMode::kEcb, k3, {}, pt).value());
}

TEST(Cipher, RejectsPartialBlocks) {
  const SecretBytes key = RandomSecret(16);
  absl::StatusOr<Bytes> r = Encrypt(CipherFamily::kAes, BlockMode::kEcb, key, {}, Bytes(15, 0));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("not a multiple of the AES block size 16"));
  EXPECT_EQ(Decrypt(CipherFamily::kTdes, BlockMode::kEcb, key, {}, Bytes(12, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecryptToSecret(CipherFamily::kAes, BlockMode::kCbc, key, Bytes(16, 0), Bytes(17, 0))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Cipher, RejectsBadKeyLengthsAndIvs) {
  const Bytes block(16, 0);
  for (size_t n : {0u, 8u, 15u, 20u, 33u}) {
    absl::StatusOr<Bytes> r =
        Encrypt(CipherFamily::kAes, BlockMode::kEcb, RandomSecret(n), {}, block);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << n;
  }
  absl::StatusOr<Bytes> single_des =
      Encrypt(CipherFamily::kTdes, BlockMode::kEcb, RandomSecret(8), {}, block);
  EXPECT_EQ(single_des.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(single_des.status().message(), HasSubstr("TDES key is 8 bytes"));
  const SecretBytes key = RandomSecret(16);
  EXPECT_EQ(Encrypt(CipherFamily::kAes, BlockMode::kCbc, key, Bytes(8, 0), block).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Encrypt(CipherFamily::kAes, BlockMode::kCbc, key, {}, block).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Encrypt(CipherFamily::kAes, BlockMode::kEcb, key, Bytes(16, 0), block).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Cipher, EmptyInputIsEmptyOutput) {
  EXPECT_TRUE(
      Encrypt(CipherFamily::kAes, BlockMode::kEcb, RandomSecret(16), {}, Bytes{}).value().empty());
}

// ---- CMAC ----
TEST(Cmac, VerifyRejectsTamperingWrongKeyAndTruncation) {
  const SecretBytes key = RandomSecret(32);
  const Bytes data = RandomBytes(45);
  const Bytes mac = Cmac(CipherFamily::kAes, key, data).value();
  ASSERT_EQ(mac.size(), 16u);
  EXPECT_TRUE(CmacVerify(CipherFamily::kAes, key, data, mac));
  EXPECT_TRUE(CmacVerify(CipherFamily::kAes, key, SecretBytes::CopyOf(data), mac));
  Bytes bad = mac;
  bad[15] ^= 1;
  EXPECT_FALSE(CmacVerify(CipherFamily::kAes, key, data, bad));
  Bytes bad_data = data;
  bad_data[0] ^= 0x80;
  EXPECT_FALSE(CmacVerify(CipherFamily::kAes, key, bad_data, mac));
  EXPECT_FALSE(CmacVerify(CipherFamily::kAes, RandomSecret(32), data, mac));
  EXPECT_FALSE(CmacVerify(CipherFamily::kAes, key, data, std::span(mac).first(8)));
  EXPECT_FALSE(CmacVerify(CipherFamily::kAes, RandomSecret(7), data, mac));
}

TEST(Cmac, FamilyDecidesFor16ByteKeys) {
  const SecretBytes key = RandomSecret(16);
  EXPECT_EQ(Cmac(CipherFamily::kAes, key, Bytes{1, 2, 3}).value().size(), 16u);
  EXPECT_EQ(Cmac(CipherFamily::kTdes, key, Bytes{1, 2, 3}).value().size(), 8u);
  EXPECT_EQ(CmacToSecret(CipherFamily::kTdes, key, Bytes{1, 2, 3}).value().size(), 8u);
}

TEST(Cmac, RejectsBadKeyLength) {
  EXPECT_EQ(Cmac(CipherFamily::kTdes, RandomSecret(32), Bytes{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<Bytes> r = Cmac(KeyAlgorithm::kAes256, RandomSecret(16), Bytes{});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("AES256 key must be 32 bytes"));
}

// ---- KWP ----
TEST(Kwp, RoundTripAllKekSizesAndOddLengths) {
  for (size_t kek_len : {16u, 24u, 32u}) {
    const SecretBytes kek = RandomSecret(kek_len);
    for (size_t n : {1u, 7u, 8u, 9u, 16u, 32u, 67u}) {
      const SecretBytes key = RandomSecret(n);
      absl::StatusOr<Bytes> wrapped = KwpWrap(kek, key);
      ASSERT_TRUE(wrapped.ok()) << wrapped.status();
      EXPECT_EQ(wrapped->size(), (n + 7) / 8 * 8 + 8);
      absl::StatusOr<SecretBytes> back = KwpUnwrap(kek, *wrapped);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_TRUE(*back == key);
    }
  }
}

TEST(Kwp, TamperedOrWrongKekIsOneUndetailedError) {
  const SecretBytes kek = RandomSecret(32);
  const Bytes wrapped = KwpWrap(kek, RandomSecret(32)).value();
  std::vector<absl::Status> failures;
  for (size_t i : {size_t{0}, size_t{8}, wrapped.size() - 1}) {
    Bytes bad = wrapped;
    bad[i] ^= 0x01;
    failures.push_back(KwpUnwrap(kek, bad).status());
  }
  failures.push_back(KwpUnwrap(RandomSecret(32), wrapped).status());
  failures.push_back(KwpUnwrap(RandomSecret(16), wrapped).status());
  for (const absl::Status& s : failures) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(s.message(), "KWP unwrap failed");
  }
}

TEST(Kwp, RejectsImpossibleLengths) {
  const SecretBytes kek = RandomSecret(32);
  EXPECT_EQ(KwpWrap(kek, SecretBytes()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KwpUnwrap(kek, Bytes(8, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KwpUnwrap(kek, Bytes(20, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KwpWrap(RandomSecret(20), RandomSecret(16)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
