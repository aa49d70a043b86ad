#include "profiles.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/rsa.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

using crypto::ExtendedKeyUsage;
using crypto::KeyUsage;

TEST(ProfilesTest, ExtensionsAreThoseOfProtocolSection2) {
  ExtensionProfile issuer = ExtensionsOf(Profile::kIssuer);
  EXPECT_TRUE(issuer.is_ca);
  EXPECT_EQ(issuer.path_len, 0);
  EXPECT_EQ(issuer.key_usage, KeyUsage::kKeyCertSign | KeyUsage::kCrlSign);
  EXPECT_EQ(issuer.extended_key_usage, ExtendedKeyUsage::kNone);

  ExtensionProfile work = ExtensionsOf(Profile::kWork);
  EXPECT_FALSE(work.is_ca);
  EXPECT_EQ(work.key_usage, KeyUsage::kKeyEncipherment);
  EXPECT_EQ(work.extended_key_usage, ExtendedKeyUsage::kNone);

  ExtensionProfile op = ExtensionsOf(Profile::kOperator);
  EXPECT_FALSE(op.is_ca);
  EXPECT_EQ(op.key_usage, KeyUsage::kDigitalSignature);

  ExtensionProfile svc = ExtensionsOf(Profile::kService);
  EXPECT_FALSE(svc.is_ca);
  EXPECT_EQ(svc.extended_key_usage, ExtendedKeyUsage::kServerAuth | ExtendedKeyUsage::kClientAuth);

  // TR-34 KDH: signs tokens, nothing else; exactly the operator profile's bits, but from its
  // own issuer.
  ExtensionProfile kdh = ExtensionsOf(Profile::kKdh);
  EXPECT_FALSE(kdh.is_ca);
  EXPECT_EQ(kdh.path_len, std::nullopt);
  EXPECT_EQ(kdh.key_usage, KeyUsage::kDigitalSignature);
  EXPECT_EQ(kdh.extended_key_usage, ExtendedKeyUsage::kNone);

  EXPECT_EQ(IssuerOf(Profile::kKdh), IssuerId::kKdhCa);
  EXPECT_EQ(IssuerOf(Profile::kWork), IssuerId::kTerminalRoot);
  EXPECT_EQ(IssuerOf(Profile::kOperator), IssuerId::kOperatorCa);
  EXPECT_EQ(IssuerOf(Profile::kService), IssuerId::kServiceCa);
}

TEST(ProfilesTest, NamesRoundTrip) {
  for (IssuerId id : kAllIssuers) EXPECT_EQ(*IssuerFromName(IssuerName(id)), id);
  EXPECT_FALSE(IssuerFromName("root").ok());
  EXPECT_EQ(IssuerName(IssuerId::kKdhCa), "kdh-ca");
  EXPECT_EQ(ProfileName(Profile::kKdh), "kdh");
  for (Profile p :
       {Profile::kIssuer, Profile::kWork, Profile::kOperator, Profile::kService, Profile::kKdh}) {
    EXPECT_EQ(*ProfileFromName(ProfileName(p)), p);
  }
  EXPECT_FALSE(ProfileFromName("tls").ok());
  for (KeySpec k : {KeySpec::kEcP256, KeySpec::kRsa2048, KeySpec::kRsa3072}) {
    EXPECT_EQ(*KeySpecFromName(KeySpecName(k)), k);
  }
  EXPECT_FALSE(KeySpecFromName("rsa-1024").ok());
}

TEST(ProfilesTest, HsmIdRule) {
  EXPECT_TRUE(ValidateHsmId("hsm-mtms").ok());
  EXPECT_TRUE(ValidateHsmId(std::string(32, 'a')).ok());
  for (std::string bad :
       std::vector<std::string>{"", std::string(33, 'a'), "HSM", "hsm_1", "hsm 1", "hsm:1"}) {
    absl::Status s = ValidateHsmId(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message(), "hsm_id: must be 1-32 characters of [a-z0-9-]");
  }
  // The longest id and index still fit X.509's 64-character CN.
  EXPECT_LE(WorkCommonName(std::string(32, 'a'), UINT64_MAX).size(), 64u);
  EXPECT_EQ(WorkCommonName("hsm-mtms", 7), "hsm-work:hsm-mtms:7");
  EXPECT_LE(KdhCommonName(std::string(32, 'a'), UINT64_MAX).size(), 64u);
  EXPECT_EQ(KdhCommonName("hsm-kms", 3), "kdh:hsm-kms:3");
}

TEST(ProfilesTest, OperatorAndServiceNameRules) {
  EXPECT_TRUE(ValidateOperatorId("alice.b-1_x").ok());
  EXPECT_FALSE(ValidateOperatorId("Alice").ok());
  EXPECT_FALSE(ValidateOperatorId(std::string(49, 'a')).ok());
  EXPECT_FALSE(ValidateOperatorId("").ok());
  EXPECT_LE(OperatorCommonName(std::string(48, 'a')).size(), 64u);

  for (const char* ok : {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms", "admin:alice"}) {
    EXPECT_TRUE(ValidateServiceName(ok).ok()) << ok;
  }
  for (const char* bad : {"", "pos", "admin:", "admin:Alice", "MTMS", "mtms ", "admin:a:b"}) {
    EXPECT_EQ(ValidateServiceName(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateDnsName("ca.rkl.internal").ok());
  for (const char* bad : {"", ".a", "a.", "a..b", "A.b", "a b", "a_b"}) {
    EXPECT_FALSE(ValidateDnsName(bad).ok()) << bad;
  }
}

TEST(ProfilesTest, HsmKeyMustBeRsa2048To4096WithExponent65537) {
  EXPECT_TRUE(ValidateHsmPublicKey(crypto::GenerateRsaKey(2048)->GetPublicKey()).ok());
  absl::Status ec = ValidateHsmPublicKey(crypto::GenerateEcP256Key()->GetPublicKey());
  EXPECT_EQ(ec.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ec.message(), "public_key_der: must be an RSA key");
  absl::Status small =
      ValidateHsmPublicKey(testing::RsaKeyWithExponent(1024, 65537).GetPublicKey());
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(small.message(), "public_key_der: RSA key must have 2048 to 4096 bits, got 1024");
  absl::Status e3 = ValidateHsmPublicKey(testing::RsaKeyWithExponent(2048, 3).GetPublicKey());
  EXPECT_EQ(e3.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e3.message(), "public_key_der: RSA public exponent must be 65537");
}

TEST(ProfilesTest, OperatorKeyMustBeP256) {
  EXPECT_TRUE(ValidateOperatorPublicKey(crypto::GenerateEcP256Key()->GetPublicKey()).ok());
  EXPECT_EQ(ValidateOperatorPublicKey(crypto::GenerateRsaKey(2048)->GetPublicKey()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateServicePublicKey(crypto::GenerateRsaKey(2048)->GetPublicKey()).ok());
  EXPECT_FALSE(ValidateServicePublicKey(testing::RsaKeyWithExponent(2048, 3).GetPublicKey()).ok());
}

}  // namespace
}  // namespace rkl::ca
