// Known answers: every CMAC, KWP and KCV vector of shared/vectors/public-vectors.json (copied
// here as constants so the test has no file dependency), plus NIST SP 800-38A/38B examples.
// TDES values beyond the NIST examples were cross-checked with `openssl mac ... CMAC` and
// `openssl enc -nopad` when the test was written.

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>

#include "rkl/common/hex.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {
namespace {

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }
std::string Hex(const absl::StatusOr<Bytes>& b) {
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? ToHex(*b) : std::string("<error>");
}

// One keyed known answer from public-vectors.json, all hex: f(key, input) = output.
struct KeyedVector {
  const char* key;
  const char* input;
  const char* output;
};

// ---- public-vectors.json: aes_cmac_rfc4493 (input: message, output: MAC) ----
TEST(PublicVectors, AesCmacRfc4493) {
  const KeyedVector vectors[] = {
      {"2b7e151628aed2a6abf7158809cf4f3c", "", "bb1d6929e95937287fa37d129b756746"},
      {"2b7e151628aed2a6abf7158809cf4f3c", "6bc1bee22e409f96e93d7e117393172a",
       "070a16b46b4d4144f79bdd9dd04a287c"},
  };
  for (const KeyedVector& v : vectors) {
    EXPECT_EQ(Hex(Cmac(CipherFamily::kAes, S(v.key), H(v.input))), ToHex(H(v.output)));
    EXPECT_TRUE(CmacVerify(CipherFamily::kAes, S(v.key), H(v.input), H(v.output)));
  }
}

// ---- public-vectors.json: aes_kwp_rfc5649, 192-bit KEK (input: key, output: wrapped) ----
TEST(PublicVectors, AesKwpRfc5649) {
  const KeyedVector vectors[] = {
      {"5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8",
       "c37b7e6492584340bed12207808941155068f738",
       "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
      {"5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8", "466f7250617369",
       "afbeb0f07dfbf5419200f2ccb50bb24f"},
  };
  for (const KeyedVector& v : vectors) {
    EXPECT_EQ(Hex(KwpWrap(S(v.key), S(v.input))), ToHex(H(v.output)));
    absl::StatusOr<SecretBytes> unwrapped = KwpUnwrap(S(v.key), H(v.output));
    ASSERT_TRUE(unwrapped.ok()) << unwrapped.status();
    EXPECT_TRUE(*unwrapped == S(v.input));
  }
}

// ---- public-vectors.json: kcv ----
TEST(PublicVectors, Kcv) {
  EXPECT_EQ(KcvHex(CipherFamily::kTdes, S("E8BC63E5479455E26577F715D587FE68")).value(), "9A4212");
  EXPECT_EQ(KcvHex(KeyAlgorithm::kTdes2, S("E8BC63E5479455E26577F715D587FE68")).value(), "9A4212");
  EXPECT_EQ(KcvHex(CipherFamily::kAes, S("3F419E1CB7079442AA37474C2EFBF8B8")).value(), "08793E");
  EXPECT_EQ(KcvHex(KeyAlgorithm::kAes128, S("3F419E1CB7079442AA37474C2EFBF8B8")).value(), "08793E");
  EXPECT_EQ(Hex(Kcv(CipherFamily::kAes, S("3F419E1CB7079442AA37474C2EFBF8B8"))), "08793E");
}

TEST(Kcv, RejectsKeyOfWrongLengthForAlgorithm) {
  absl::StatusOr<std::string> kcv =
      KcvHex(KeyAlgorithm::kAes256, S("3F419E1CB7079442AA37474C2EFBF8B8"));
  EXPECT_EQ(kcv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KcvHex(CipherFamily::kTdes, S("0102030405060708")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- NIST SP 800-38B, AES ----
TEST(NistCmac, Aes128SubkeyK1) {
  // For a one-block message M, CMAC = E_K(M xor K1), so K1 = D_K(CMAC) xor M: checks the
  // subkey of SP 800-38B D.1 through the ECB primitive, independently of the CMAC code path.
  const SecretBytes key = S("2b7e151628aed2a6abf7158809cf4f3c");
  const Bytes m = H("6bc1bee22e409f96e93d7e117393172a");
  Bytes mac = Cmac(CipherFamily::kAes, key, m).value();
  Bytes x = Decrypt(CipherFamily::kAes, BlockMode::kEcb, key, {}, mac).value();
  for (size_t i = 0; i < 16; ++i) x[i] ^= m[i];
  EXPECT_EQ(ToHex(x), "FBEED618357133667C85E08F7236A8DE");
  // L = E_K(0^128) from the same example.
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kAes, BlockMode::kEcb, key, {}, Bytes(16, 0))),
            "7DF76B0C1AB899B33E42F047B91B546F");
}

// ---- NIST SP 800-38B examples, AES and TDES ----
// One CMAC example; `algorithm`, when set, is checked through the KeyAlgorithm overload too.
struct NistCmacVector {
  const char* name;
  CipherFamily family;
  std::optional<KeyAlgorithm> algorithm;
  const char* key;
  const char* msg;
  const char* mac;
};

constexpr char kAesKey128[] = "2b7e151628aed2a6abf7158809cf4f3c";
constexpr char kAesKey256[] = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
constexpr char kTdesKey3[] = "8aa83bf8cbda10620bc1bf19fbb6cd58bc313d4a371ca8b5";
constexpr char kTdesKey2[] = "4cf15134a2850dd58a3d10ba80570d38";

const NistCmacVector kNistCmacVectors[] = {
    {"Aes128Msg40", CipherFamily::kAes, std::nullopt, kAesKey128,
     "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411",
     "DFA66747DE9AE63030CA32611497C827"},
    {"Aes128Msg64", CipherFamily::kAes, std::nullopt, kAesKey128,
     "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
     "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
     "51F0BEBF7E3B9D92FC49741779363CFE"},
    {"Aes256Empty", CipherFamily::kAes, std::nullopt, kAesKey256, "",
     "028962F61B7BF89EFC6B551F4667D983"},
    {"Aes256Msg16", CipherFamily::kAes, KeyAlgorithm::kAes256, kAesKey256,
     "6bc1bee22e409f96e93d7e117393172a", "28A7023F452E8F82BD4BF28D8C37C35C"},
    {"Tdes3KeyEmpty", CipherFamily::kTdes, std::nullopt, kTdesKey3, "", "B7A688E122FFAF95"},
    {"Tdes3KeyMsg8", CipherFamily::kTdes, std::nullopt, kTdesKey3, "6bc1bee22e409f96",
     "8E8F293136283797"},
    {"Tdes3KeyMsg20", CipherFamily::kTdes, std::nullopt, kTdesKey3,
     "6bc1bee22e409f96e93d7e117393172aae2d8a57", "743DDBE0CE2DC2ED"},
    {"Tdes2KeyEmpty", CipherFamily::kTdes, std::nullopt, kTdesKey2, "", "BD2EBF9A3BA00361"},
    {"Tdes2KeyMsg16", CipherFamily::kTdes, KeyAlgorithm::kTdes2, kTdesKey2,
     "6bc1bee22e409f96e93d7e117393172a", "743DA9F41B91EC83"},
};

class NistCmacVectors : public ::testing::TestWithParam<NistCmacVector> {};

TEST_P(NistCmacVectors, Matches) {
  const NistCmacVector& v = GetParam();
  EXPECT_EQ(Hex(Cmac(v.family, S(v.key), H(v.msg))), v.mac);
  if (v.algorithm.has_value()) {
    EXPECT_EQ(Hex(Cmac(*v.algorithm, S(v.key), H(v.msg))), v.mac);
  }
}

INSTANTIATE_TEST_SUITE_P(Sp800_38b, NistCmacVectors, ::testing::ValuesIn(kNistCmacVectors),
                         [](const ::testing::TestParamInfo<NistCmacVector>& info) {
                           return std::string(info.param.name);
                         });

// ---- NIST SP 800-38A and openssl enc cross-checks for the raw modes ----
TEST(CipherKnownAnswer, AesEcbAndCbc) {
  const SecretBytes k128 = S("2b7e151628aed2a6abf7158809cf4f3c");
  const Bytes pt = H("6bc1bee22e409f96e93d7e117393172a");
  const Bytes iv = H("000102030405060708090a0b0c0d0e0f");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kAes, BlockMode::kEcb, k128, {}, pt)),
            "3AD77BB40D7A3660A89ECAF32466EF97");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kAes, BlockMode::kCbc, k128, iv, pt)),
            "7649ABAC8119B246CEE98E9B12E9197D");
  const SecretBytes k192 = S("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kAes, BlockMode::kCbc, k192, iv,
                        H("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"))),
            "4F021DB243BC633D7178183A9FA071E8B4D9ADA9AD7DEDF4E5E738763F69145A");
  const SecretBytes k256 = S("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kAes, BlockMode::kEcb, k256, {}, pt)),
            "F3EED1BDB5D2A03C064B5A7E3DB181F8");
}

TEST(CipherKnownAnswer, TdesCbc) {
  const Bytes pt =
      H("4e6f77206973207468652074696d6520666f7220616c6c20");  // "Now is the time for all "
  const Bytes iv = H("0001020304050607");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kTdes, BlockMode::kCbc, S("0123456789ABCDEFFEDCBA9876543210"),
                        iv, pt)),
            "4870907B7A64CB0B24FE986C4119CEE67349A29D993CA38A");
  EXPECT_EQ(Hex(Encrypt(CipherFamily::kTdes, BlockMode::kCbc,
                        S("0123456789ABCDEFFEDCBA987654321089ABCDEF01234567"), iv, pt)),
            "75023126BB6AB78570DF953D51A8BB25E49C08F0C40AAD73");
}

}  // namespace
}  // namespace rkl::crypto
