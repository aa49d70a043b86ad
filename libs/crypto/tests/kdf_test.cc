// SP 800-108 counter-mode KDF with CMAC in the layout of PROTOCOL §7. Expected outputs were
// computed independently while writing the test, one PRF block at a time, with
//   printf '01 ‖ label ‖ 00 ‖ context ‖ [L]_2' | xxd -r -p |
//     openssl mac -cipher AES-128-CBC -macopt hexkey:<K> -in /dev/stdin CMAC
// (DES-EDE-CBC for the TDES case, counter 02 for the second block).

#include "rkl/crypto/kdf.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string_view>

#include "rkl/common/hex.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {
namespace {

using ::testing::HasSubstr;

SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(FromHex(hex).value()); }
std::string Hex(const SecretBytes& s) { return ToHex(s.RevealSecret()); }

// One known answer: KDF(key, label, context, bits) = expected.
struct KdfVector {
  const char* name;
  CipherFamily family;
  const char* key_hex;
  const char* label;
  const char* context;
  size_t bits;
  const char* expected_hex;
};

constexpr KdfVector kKdfVectors[] = {
    {"Aes128OneBlock", CipherFamily::kAes, "000102030405060708090a0b0c0d0e0f", "RKL-AUTH-K2P",
     "TERM-0001", 128, "DA1096E2CD36E804D0DF31D853AAB0C3"},
    {"Aes256TwoBlocks", CipherFamily::kAes,
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "RKL-AUTH-P2K",
     "TERM-0001", 256, "4ED433AE66608B41794181EB7FB29A30573B369F574BC3B1CB18AA23B471B385"},
    {"Tdes2TwoBlocks", CipherFamily::kTdes, "0123456789ABCDEFFEDCBA9876543210", "RKL-AUTH-K2P",
     "TERM-0001", 128, "251BF2EB5F04F704EE2BEE235EA7E045"},
    // L = 40: [L]_2 = 0x0028 changes the PRF input, so this is not a prefix of the 128-bit
    // output.
    {"LengthIsBoundIntoEveryBlockAndOutputIsTruncated", CipherFamily::kAes,
     "000102030405060708090a0b0c0d0e0f", "RKL-AUTH-K2P", "TERM-0001", 40, "931F0F3106"},
};

class KdfKnownAnswer : public ::testing::TestWithParam<KdfVector> {};

TEST_P(KdfKnownAnswer, Matches) {
  const KdfVector& v = GetParam();
  absl::StatusOr<SecretBytes> k =
      KdfCounterCmac(v.family, S(v.key_hex), v.label, v.context, v.bits);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(Hex(*k), v.expected_hex);
}

INSTANTIATE_TEST_SUITE_P(Kdf, KdfKnownAnswer, ::testing::ValuesIn(kKdfVectors),
                         [](const ::testing::TestParamInfo<KdfVector>& info) {
                           return std::string(info.param.name);
                         });

TEST(Kdf, LabelAndContextSeparateOutputs) {
  const SecretBytes key = RandomSecret(16);
  const SecretBytes a = KdfCounterCmac(CipherFamily::kAes, key, "RKL-AUTH-K2P", "SN1", 128).value();
  const SecretBytes b = KdfCounterCmac(CipherFamily::kAes, key, "RKL-AUTH-P2K", "SN1", 128).value();
  const SecretBytes c = KdfCounterCmac(CipherFamily::kAes, key, "RKL-AUTH-K2P", "SN2", 128).value();
  EXPECT_FALSE(a == b);
  EXPECT_FALSE(a == c);
  EXPECT_TRUE(a == KdfCounterCmac(CipherFamily::kAes, key, "RKL-AUTH-K2P", "SN1", 128).value());
}

TEST(Kdf, RejectsBadLengthsAndKeys) {
  const SecretBytes key = RandomSecret(16);
  for (size_t bits : {0u, 7u, 129u, 65536u}) {
    absl::StatusOr<SecretBytes> k = KdfCounterCmac(CipherFamily::kAes, key, "L", "C", bits);
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << bits;
  }
  // 8-byte PRF blocks: 256 blocks would overflow the 1-byte counter.
  absl::StatusOr<SecretBytes> too_many =
      KdfCounterCmac(CipherFamily::kTdes, key, "L", "C", 256 * 64);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_many.status().message(), HasSubstr("255 blocks"));
  EXPECT_TRUE(KdfCounterCmac(CipherFamily::kTdes, key, "L", "C", 255 * 64).ok());
  EXPECT_EQ(KdfCounterCmac(CipherFamily::kAes, RandomSecret(10), "L", "C", 128).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
