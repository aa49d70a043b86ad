#include "master_key.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "rkl/crypto/aead.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/random.h"
#include "rkl/testing/temp_dir.h"

namespace rkl::ca {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Each test's key files go in a fresh directory.
using MasterKeyTest = rkl::testing::TempDirTest;

crypto::Certificate SelfSigned(const crypto::PrivateKey& key, const std::string& cn) {
  return crypto::CertificateBuilder()
      .SetSubjectCommonName(cn)
      .SetSerial({0x41, 0x02})
      .SetValidity(1'700'000'000, 1'800'000'000)
      .SetBasicConstraints(true, 0)
      .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign)
      .SelfSign(key)
      .value();
}

constexpr char kHexKey[] = "000102030405060708090A0B0C0D0E0F101112131415161718191a1b1c1d1e1f";

TEST_F(MasterKeyTest, LoadsHexAndRawFormsToTheSameKey) {
  auto hex = MasterKey::LoadFromFile(WriteFile("hex", std::string(kHexKey) + "\n", 0600));
  ASSERT_TRUE(hex.ok()) << hex.status();
  std::string raw_bytes;
  for (int i = 0; i < 32; ++i) raw_bytes.push_back(static_cast<char>(i));
  auto raw = MasterKey::LoadFromFile(WriteFile("raw", raw_bytes, 0400));
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(hex->KcvHex(), raw->KcvHex());
  EXPECT_EQ(hex->KcvHex().size(), 6u);
}

TEST_F(MasterKeyTest, RefusesFilesGroupOrOthersCanAccess) {
  for (mode_t mode : {0640, 0604, 0660, 0644, 0610}) {
    auto key = MasterKey::LoadFromFile(WriteFile("k", kHexKey, mode));
    ASSERT_FALSE(key.ok()) << std::oct << mode;
    EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(key.status().message(), HasSubstr("chmod 600"));
    std::filesystem::remove(dir_ + "/k");
  }
}

TEST_F(MasterKeyTest, RefusesWrongSizesAndNonHexWithoutEchoingContent) {
  for (const std::string& content :
       {std::string(31, 'a'), std::string(33, 'a'), std::string(63, 'A'),
        std::string("ZZ") + std::string(kHexKey).substr(2), std::string(kHexKey) + "00"}) {
    auto key = MasterKey::LoadFromFile(WriteFile("k", content, 0600));
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(key.status().message(), Not(HasSubstr("0102030405")));
    std::filesystem::remove(dir_ + "/k");
  }
  EXPECT_EQ(MasterKey::LoadFromFile(dir_ + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(MasterKeyTest, CreateFileWritesA0600KeyAndNeverOverwrites) {
  std::string path = dir_ + "/new.key";
  ASSERT_TRUE(MasterKey::CreateFile(path).ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto first = MasterKey::LoadFromFile(path);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(MasterKey::CreateFile(path).code(), absl::StatusCode::kAlreadyExists);
  auto again = MasterKey::LoadFromFile(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(first->KcvHex(), again->KcvHex());
  // Two fresh keys differ.
  ASSERT_TRUE(MasterKey::CreateFile(dir_ + "/other.key").ok());
  EXPECT_NE(MasterKey::LoadFromFile(dir_ + "/other.key")->KcvHex(), first->KcvHex());
}

TEST_F(MasterKeyTest, SealedIssuerKeyOpensOnlyWithSameKeyNameAndCertificate) {
  auto mk = MasterKey::FromSecret(crypto::RandomSecret(32)).value();
  auto other_mk = MasterKey::FromSecret(crypto::RandomSecret(32)).value();
  crypto::PrivateKey key = crypto::GenerateEcP256Key().value();
  crypto::Certificate cert = SelfSigned(key, "operator-ca");
  crypto::PrivateKey key2 = crypto::GenerateEcP256Key().value();
  crypto::Certificate cert2 = SelfSigned(key2, "operator-ca");

  auto sealed = mk.SealIssuerKey("operator-ca", cert, key);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  auto opened = mk.OpenIssuerKey("operator-ca", cert, *sealed);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(opened->GetPublicKey() == key.GetPublicKey());

  // The clear PKCS#8 is not in the sealed blob.
  crypto::SecretBytes pkcs8 = key.ExportPkcs8DerSecret().value();
  std::span<const uint8_t> clear = pkcs8.RevealSecret();
  EXPECT_EQ(std::search(sealed->begin(), sealed->end(), clear.begin() + 20, clear.end()),
            sealed->end());

  for (const absl::Status& s : {other_mk.OpenIssuerKey("operator-ca", cert, *sealed).status(),
                                mk.OpenIssuerKey("service-ca", cert, *sealed).status(),
                                mk.OpenIssuerKey("operator-ca", cert2, *sealed).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
    // One message whatever failed.
    EXPECT_THAT(s.message(), HasSubstr(": private key cannot be opened with this master key"));
  }
  Bytes tampered = *sealed;
  tampered[20] ^= 1;
  EXPECT_EQ(mk.OpenIssuerKey("operator-ca", cert, tampered).status().code(),
            absl::StatusCode::kInternal);
  // A key that does not belong to the certificate is refused at sealing time.
  EXPECT_EQ(mk.SealIssuerKey("operator-ca", cert, key2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Issuer rows already in CA databases hold AES-256-GCM(master key, PKCS#8) as
// nonce ‖ ciphertext ‖ tag with AAD = issuer name ‖ SHA-256(certificate DER); a record made
// that way, without MasterKey, still opens.
TEST_F(MasterKeyTest, OpensIssuerKeysSealedInTheStoredLayout) {
  const crypto::SecretBytes master = crypto::SecretBytes::CopyOf(FromHex(kHexKey).value());
  auto mk = MasterKey::FromSecret(master).value();
  crypto::PrivateKey key = crypto::GenerateEcP256Key().value();
  crypto::Certificate cert = SelfSigned(key, "service-ca");
  Bytes aad = {'s', 'e', 'r', 'v', 'i', 'c', 'e', '-', 'c', 'a'};
  const Bytes fingerprint = cert.Sha256Fingerprint();
  aad.insert(aad.end(), fingerprint.begin(), fingerprint.end());
  const Bytes stored = crypto::AeadSeal(master, key.ExportPkcs8DerSecret().value(), aad).value();

  auto opened = mk.OpenIssuerKey("service-ca", cert, stored);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(opened->GetPublicKey() == key.GetPublicKey());
  // And what MasterKey seals opens the same way.
  const Bytes sealed = mk.SealIssuerKey("service-ca", cert, key).value();
  EXPECT_TRUE(crypto::AeadOpen(master, sealed, aad).value() == key.ExportPkcs8DerSecret().value());
}

TEST_F(MasterKeyTest, FromSecretRequires32Bytes) {
  EXPECT_FALSE(MasterKey::FromSecret(crypto::RandomSecret(16)).ok());
  EXPECT_TRUE(MasterKey::FromSecret(crypto::RandomSecret(32)).ok());
}

}  // namespace
}  // namespace rkl::ca
