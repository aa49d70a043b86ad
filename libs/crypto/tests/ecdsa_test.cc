#include "rkl/crypto/ecdsa.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <memory>

#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"

namespace rkl::crypto {
namespace {

class EcdsaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = std::make_unique<PrivateKey>(GenerateEcP256Key().value());
    other_ = std::make_unique<PrivateKey>(GenerateEcP256Key().value());
  }
  std::unique_ptr<PrivateKey> key_;
  std::unique_ptr<PrivateKey> other_;
  const Bytes package_ = Bytes{'p', 'a', 'c', 'k', 'a', 'g', 'e', 0x00, 0x01, 0xFF};
};

TEST_F(EcdsaTest, KeyIsP256) {
  EXPECT_EQ(key_->Type(), KeyType::kEcP256);
  EXPECT_EQ(key_->Bits(), 256);
  EXPECT_EQ(key_->GetPublicKey().Type(), KeyType::kEcP256);
  EXPECT_EQ(KeyTypeName(KeyType::kEcP256), "EC-P256");
}

TEST_F(EcdsaTest, SignVerify) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ((*sig)[0], 0x30);  // DER SEQUENCE
  EXPECT_LE(sig->size(), 72u);
  EXPECT_TRUE(EcdsaVerify(key_->GetPublicKey(), package_, *sig).ok());
}

TEST_F(EcdsaTest, EmptyMessage) {
  auto sig = EcdsaSign(*key_, Bytes{});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(EcdsaVerify(key_->GetPublicKey(), Bytes{}, *sig).ok());
}

TEST_F(EcdsaTest, WrongKeyFails) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  absl::Status s = EcdsaVerify(other_->GetPublicKey(), package_, *sig);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(EcdsaTest, ModifiedMessageFails) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  Bytes modified = package_;
  modified.back() ^= 0x01;
  EXPECT_EQ(EcdsaVerify(key_->GetPublicKey(), modified, *sig).code(),
            absl::StatusCode::kUnauthenticated);
  Bytes longer = package_;
  longer.push_back(0);
  EXPECT_EQ(EcdsaVerify(key_->GetPublicKey(), longer, *sig).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(EcdsaTest, ModifiedSignatureValueFails) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  Bytes bad = *sig;
  bad.back() ^= 0x01;  // still canonical DER: last byte of s
  EXPECT_EQ(EcdsaVerify(key_->GetPublicKey(), package_, bad).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(EcdsaTest, MalformedSignatureIsInvalidArgument) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  PublicKey pub = key_->GetPublicKey();
  EXPECT_EQ(EcdsaVerify(pub, package_, Bytes{}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EcdsaVerify(pub, package_, Bytes{1, 2, 3}).code(), absl::StatusCode::kInvalidArgument);
  Bytes trailing = *sig;
  trailing.push_back(0x00);
  EXPECT_EQ(EcdsaVerify(pub, package_, trailing).code(), absl::StatusCode::kInvalidArgument);
  Bytes truncated(sig->begin(), sig->end() - 1);
  EXPECT_EQ(EcdsaVerify(pub, package_, truncated).code(), absl::StatusCode::kInvalidArgument);
  // Non-minimal INTEGER encoding of r (an extra leading 0x00) is BER, not DER.
  Bytes padded = {0x30, static_cast<uint8_t>((*sig)[1] + 1), 0x02,
                  static_cast<uint8_t>((*sig)[3] + 1), 0x00};
  padded.insert(padded.end(), sig->begin() + 4, sig->end());
  EXPECT_EQ(EcdsaVerify(pub, package_, padded).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EcdsaTest, VerifiesWithReimportedPublicKey) {
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  auto from_der = PublicKey::FromDer(key_->GetPublicKey().ToDer());
  ASSERT_TRUE(from_der.ok());
  EXPECT_TRUE(EcdsaVerify(*from_der, package_, *sig).ok());
  auto from_pem = PublicKey::FromPem(key_->GetPublicKey().ToPem());
  ASSERT_TRUE(from_pem.ok());
  EXPECT_TRUE(EcdsaVerify(*from_pem, package_, *sig).ok());
}

TEST_F(EcdsaTest, Pkcs8RoundTripSignsForTheSamePublicKey) {
  auto der = key_->ExportPkcs8DerSecret();
  ASSERT_TRUE(der.ok());
  auto again = PrivateKey::FromPkcs8DerSecret(*der);
  ASSERT_TRUE(again.ok()) << again.status();
  auto sig = EcdsaSign(*again, package_);
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(EcdsaVerify(key_->GetPublicKey(), package_, *sig).ok());
}

TEST_F(EcdsaTest, RejectsRsaKeys) {
  auto rsa = GenerateRsaKey(2048);
  ASSERT_TRUE(rsa.ok());
  EXPECT_EQ(EcdsaSign(*rsa, package_).status().code(), absl::StatusCode::kInvalidArgument);
  auto sig = EcdsaSign(*key_, package_);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(EcdsaVerify(rsa->GetPublicKey(), package_, *sig).code(),
            absl::StatusCode::kInvalidArgument);
}

// PrivateKeyNeedsPrivateComponent: keys_test.cc, for both key types.

TEST(EcdsaKeyTest, RejectsOtherCurves) {
  EVP_PKEY* raw = EVP_EC_gen("P-384");
  ASSERT_NE(raw, nullptr);
  auto key = PrivateKey::FromEvpPkey(EvpPkeyPtr(raw));
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto

namespace rkl::crypto {
namespace {

TEST(PrivateKeyPem, RoundTripsAndRejectsGarbage) {
  auto key = GenerateEcP256Key();
  ASSERT_TRUE(key.ok());
  auto pem = key->ExportPkcs8PemSecret();
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_EQ(AsString(pem->RevealSecret()).substr(0, 27), "-----BEGIN PRIVATE KEY-----");
  auto back = PrivateKey::FromPemSecret(*pem);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->GetPublicKey() == key->GetPublicKey());

  const std::string junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
  auto bad = PrivateKey::FromPemSecret(SecretBytes::CopyOf(AsBytes(junk)));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
