// rkl's TR-34 profile: the TMK key block header, the KRD id, the SN in a KRD certificate and
// the install proof, against values computed with `openssl mac CMAC` (see each test).
#include "rkl/tr34/profile.h"

#include <gtest/gtest.h>

#include "rkl/crypto/secret_bytes.h"

namespace rkl::tr34 {
namespace {

using crypto::KeyAlgorithm;

crypto::SecretBytes KeyFromHex(std::string_view hex) {
  Bytes bytes = FromHex(hex).value();
  return crypto::SecretBytes::CopyOf(bytes);
}

const Bytes kNonce = {1, 2, 3, 4, 5, 6, 7, 8};

TEST(Tr34Profile, TmkHeaderFollowsTheTr31ProfileOfProtocolSection8) {
  EXPECT_EQ(TmkHeader(KeyAlgorithm::kAes128).value(), "D0016K0AD00N0000");
  EXPECT_EQ(TmkHeader(KeyAlgorithm::kAes256).value(), "D0016K0AD00N0000");
  EXPECT_EQ(TmkHeader(KeyAlgorithm::kTdes2).value(), "B0016K0TD00N0000");
  EXPECT_FALSE(TmkHeader(static_cast<KeyAlgorithm>(0x55)).ok());
}

// (printf 'RKL-TR34-INSTALLEDPOS-1'; printf "\xbe\x7e\xd6" (KCV = CMAC(K, 0^16), PROTOCOL §1);
// printf '\x01...\x08') |
//   openssl mac -cipher AES-128-CBC -macopt hexkey:000102030405060708090a0b0c0d0e0f CMAC
TEST(Tr34Profile, InstallProofAesKnownAnswer) {
  auto tmk = KeyFromHex("000102030405060708090A0B0C0D0E0F");
  auto proof = InstallProof(KeyAlgorithm::kAes128, tmk, "POS-1", kNonce);
  ASSERT_TRUE(proof.ok()) << proof.status();
  EXPECT_EQ(ToHex(*proof), "808D0AEE2179E7117ECCF1ECF28A377A");
  EXPECT_TRUE(VerifyInstallProof(KeyAlgorithm::kAes128, tmk, "POS-1", kNonce, *proof));
}

// The same with KCV 08D7B4 under DES-EDE3-CBC, key K1 K2 K1.
TEST(Tr34Profile, InstallProofTdesKnownAnswer) {
  auto tmk = KeyFromHex("0123456789ABCDEFFEDCBA9876543210");
  auto proof = InstallProof(KeyAlgorithm::kTdes2, tmk, "POS-1", kNonce);
  ASSERT_TRUE(proof.ok()) << proof.status();
  EXPECT_EQ(ToHex(*proof), "07D769FD1D4A0FEA");
}

TEST(Tr34Profile, InstallProofIsBoundToSnNonceAndKey) {
  auto tmk = KeyFromHex("000102030405060708090A0B0C0D0E0F");
  Bytes proof = InstallProof(KeyAlgorithm::kAes128, tmk, "POS-1", kNonce).value();
  Bytes other_nonce = kNonce;
  other_nonce.back() ^= 1;
  EXPECT_FALSE(VerifyInstallProof(KeyAlgorithm::kAes128, tmk, "POS-2", kNonce, proof));
  EXPECT_FALSE(VerifyInstallProof(KeyAlgorithm::kAes128, tmk, "POS-1", other_nonce, proof));
  auto other_tmk = KeyFromHex("000102030405060708090A0B0C0D0E0E");
  EXPECT_FALSE(VerifyInstallProof(KeyAlgorithm::kAes128, other_tmk, "POS-1", kNonce, proof));
  Bytes truncated(proof.begin(), proof.end() - 1);
  EXPECT_FALSE(VerifyInstallProof(KeyAlgorithm::kAes128, tmk, "POS-1", kNonce, truncated));
}

// echo -n <DER> | sha256sum, upper-cased.
TEST(Tr34Profile, KrdIdIsTheSha256OfTheIssuerAndSerialNumber) {
  CertId id{{0x30, 0x03, 0x02, 0x01, 0x01}};
  EXPECT_EQ(KrdIdOf(id), "1B65F68A522C858715F5DD951CD0402DC16691778814BF0759822B7A257421D0");
}

}  // namespace
}  // namespace rkl::tr34
