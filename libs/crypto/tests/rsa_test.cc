#include "rkl/crypto/rsa.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"

namespace rkl::crypto {
namespace {

using ::testing::HasSubstr;

// TK payload shape from PROTOCOL.md §3: 0x01 ‖ code ‖ TEK ‖ AUK (AES-128).
SecretBytes SamplePayload() {
  Bytes p = {0x01, 0x11};
  for (int i = 0; i < 32; ++i) p.push_back(static_cast<uint8_t>(0xA0 + i));
  return SecretBytes::CopyOf(p);
}

class RsaOaepTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    key_ = new PrivateKey(GenerateRsaKey(2048).value());
    other_key_ = new PrivateKey(GenerateRsaKey(2048).value());
  }
  static void TearDownTestSuite() {
    delete key_;
    delete other_key_;
    key_ = other_key_ = nullptr;
  }
  static PrivateKey* key_;
  static PrivateKey* other_key_;
};
PrivateKey* RsaOaepTest::key_ = nullptr;
PrivateKey* RsaOaepTest::other_key_ = nullptr;

void ExpectUniformFailure(const absl::StatusOr<SecretBytes>& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(r.status().message(), "decryption failed");
}

TEST_F(RsaOaepTest, RoundTripWithTransportKeyLabel) {
  SecretBytes payload = SamplePayload();
  Bytes label = TransportKeyOaepLabel("TERM-0001");
  EXPECT_EQ(AsString(label), "RKL-TK:TERM-0001");
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), payload, label);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), 256u);
  auto pt = RsaOaepDecrypt(*key_, *ct, label);
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_TRUE(*pt == payload);
}

TEST_F(RsaOaepTest, CiphertextIsRandomized) {
  Bytes label = TransportKeyOaepLabel("SN1");
  auto a = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), label);
  auto b = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), label);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

TEST_F(RsaOaepTest, EmptyLabelRoundTrip) {
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), {});
  ASSERT_TRUE(ct.ok()) << ct.status();
  auto pt = RsaOaepDecrypt(*key_, *ct, {});
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_TRUE(*pt == SamplePayload());
  // The empty label is a label too: a non-empty one does not decrypt it.
  ExpectUniformFailure(RsaOaepDecrypt(*key_, *ct, TransportKeyOaepLabel("X")));
}

TEST_F(RsaOaepTest, OtherSerialNumberLabelFailsUniformly) {
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), TransportKeyOaepLabel("SN-A"));
  ASSERT_TRUE(ct.ok());
  ExpectUniformFailure(RsaOaepDecrypt(*key_, *ct, TransportKeyOaepLabel("SN-B")));
  ExpectUniformFailure(RsaOaepDecrypt(*key_, *ct, TransportKeyOaepLabel("SN-A ")));
}

TEST_F(RsaOaepTest, OtherKeyFailsWithTheSameError) {
  Bytes label = TransportKeyOaepLabel("SN-A");
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), label);
  ASSERT_TRUE(ct.ok());
  ExpectUniformFailure(RsaOaepDecrypt(*other_key_, *ct, label));
}

TEST_F(RsaOaepTest, TamperedCiphertextFailsWithTheSameError) {
  Bytes label = TransportKeyOaepLabel("SN-A");
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), label);
  ASSERT_TRUE(ct.ok());
  for (size_t pos : {size_t{0}, size_t{1}, size_t{100}, ct->size() - 1}) {
    Bytes bad = *ct;
    bad[pos] ^= 0x01;
    ExpectUniformFailure(RsaOaepDecrypt(*key_, bad, label));
  }
  Bytes truncated(ct->begin(), ct->end() - 1);
  ExpectUniformFailure(RsaOaepDecrypt(*key_, truncated, label));
  Bytes longer = *ct;
  longer.push_back(0);
  ExpectUniformFailure(RsaOaepDecrypt(*key_, longer, label));
  ExpectUniformFailure(RsaOaepDecrypt(*key_, Bytes{}, label));
  ExpectUniformFailure(RsaOaepDecrypt(*key_, Bytes(256, 0xFF), label));  // >= modulus
}

TEST_F(RsaOaepTest, PlaintextLengthLimit) {
  PublicKey pub = key_->GetPublicKey();
  ASSERT_EQ(RsaOaepMaxPlaintext(pub), 190u);
  EXPECT_TRUE(RsaOaepEncrypt(pub, SecretBytes(190), {}).ok());
  auto too_long = RsaOaepEncrypt(pub, SecretBytes(191), {});
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_long.status().message()), HasSubstr("plaintext"));
  EXPECT_EQ(RsaOaepEncrypt(pub, SecretBytes(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RsaOaepTest, Pkcs8ExportImportKeepsTheKey) {
  auto der = key_->ExportPkcs8DerSecret();
  ASSERT_TRUE(der.ok()) << der.status();
  auto again = PrivateKey::FromPkcs8DerSecret(*der);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Type(), KeyType::kRsa);
  EXPECT_TRUE(again->GetPublicKey() == key_->GetPublicKey());
  Bytes label = TransportKeyOaepLabel("SN");
  auto ct = RsaOaepEncrypt(key_->GetPublicKey(), SamplePayload(), label);
  ASSERT_TRUE(ct.ok());
  auto pt = RsaOaepDecrypt(*again, *ct, label);
  ASSERT_TRUE(pt.ok());
  EXPECT_TRUE(*pt == SamplePayload());
}

TEST_F(RsaOaepTest, PublicKeyDerAndPemRoundTrip) {
  PublicKey pub = key_->GetPublicKey();
  EXPECT_EQ(pub.Type(), KeyType::kRsa);
  EXPECT_EQ(pub.Bits(), 2048);
  auto from_der = PublicKey::FromDer(pub.ToDer());
  ASSERT_TRUE(from_der.ok()) << from_der.status();
  EXPECT_TRUE(*from_der == pub);
  std::string pem = pub.ToPem();
  EXPECT_THAT(pem, HasSubstr("-----BEGIN PUBLIC KEY-----"));
  auto from_pem = PublicKey::FromPem(pem);
  ASSERT_TRUE(from_pem.ok()) << from_pem.status();
  EXPECT_TRUE(*from_pem == pub);
  EXPECT_FALSE(pub == other_key_->GetPublicKey());
}

TEST_F(RsaOaepTest, PublicKeyIsPublicOnly) {
  // A PublicKey must not be a back door to the private components.
  PublicKey pub = key_->GetPublicKey();
  BIGNUM* d = nullptr;
  EXPECT_NE(EVP_PKEY_get_bn_param(pub.evp_pkey(), OSSL_PKEY_PARAM_RSA_D, &d), 1);
  BN_free(d);
}

TEST(RsaKeyTest, GeneratesPublicExponent65537) {
  auto key = GenerateRsaKey(2048);
  ASSERT_TRUE(key.ok());
  BIGNUM* e = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(key->evp_pkey(), OSSL_PKEY_PARAM_RSA_E, &e), 1);
  EXPECT_TRUE(BN_is_word(e, 65537));
  BN_free(e);
}

TEST(RsaKeyTest, RejectsOtherSizes) {
  for (int bits : {0, 1024, 2047, 4096}) {
    EXPECT_EQ(GenerateRsaKey(bits).status().code(), absl::StatusCode::kInvalidArgument) << bits;
  }
}

TEST(RsaKeyTest, Rsa3072RoundTrip) {
  auto key = GenerateRsaKey(3072);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->Bits(), 3072);
  EXPECT_EQ(RsaOaepMaxPlaintext(key->GetPublicKey()), 318u);
  Bytes label = TransportKeyOaepLabel("SN-3072");
  auto ct = RsaOaepEncrypt(key->GetPublicKey(), SamplePayload(), label);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), 384u);
  auto pt = RsaOaepDecrypt(*key, *ct, label);
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_TRUE(*pt == SamplePayload());
}

TEST(RsaKeyTest, OaepRejectsEcKeys) {
  auto ec = GenerateEcP256Key();
  ASSERT_TRUE(ec.ok());
  EXPECT_EQ(RsaOaepEncrypt(ec->GetPublicKey(), SamplePayload(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RsaOaepDecrypt(*ec, Bytes(64, 1), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// PrivateKeyNeedsPrivateComponent: keys_test.cc, for both key types.

TEST(RsaKeyImportTest, RejectsGarbage) {
  EXPECT_EQ(PublicKey::FromDer(Bytes{0x30, 0x03, 0x02, 0x01, 0x00}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PublicKey::FromDer(Bytes{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PublicKey::FromPem("not a key").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PrivateKey::FromPkcs8DerSecret(SecretBytes::CopyOf(Bytes{1, 2, 3})).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto key = GenerateRsaKey(2048);
  ASSERT_TRUE(key.ok());
  Bytes der = key->GetPublicKey().ToDer();
  der.push_back(0x00);  // trailing byte
  EXPECT_EQ(PublicKey::FromDer(der).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
