#include "rkl/crypto/pkcs12.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/pkcs12.h>

#include <algorithm>

#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"

namespace rkl::crypto {
namespace {

constexpr int64_t kNow = 1'750'000'000;
// Fast iterations for most tests; one test covers the default.
const Pkcs12WriteOptions kFast{.iterations = 2048};

SecretBytes Pin(std::string_view s) { return SecretBytes::CopyOf(AsBytes(s)); }

bool Contains(std::span<const uint8_t> haystack, std::span<const uint8_t> needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

// operator-ca (EC) and an operator card (EC key + certificate), as PROTOCOL.md §1 describes.
class Pkcs12Test : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_key_ = std::make_unique<PrivateKey>(GenerateEcP256Key().value());
    card_key_ = std::make_unique<PrivateKey>(GenerateEcP256Key().value());
    ca_ =
        std::make_unique<Certificate>(CertificateBuilder()
                                          .SetSubjectCommonName("operator-ca")
                                          .SetSerial(Bytes{1})
                                          .SetValidity(kNow, kNow + 86400 * 365)
                                          .SetBasicConstraints(true, 0)
                                          .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign)
                                          .SelfSign(*ca_key_)
                                          .value());
    card_ = std::make_unique<Certificate>(CertificateBuilder()
                                              .SetSubjectCommonName("operator:alice")
                                              .SetSerial(Bytes{2})
                                              .SetValidity(kNow, kNow + 86400 * 30)
                                              .SetPublicKey(card_key_->GetPublicKey())
                                              .SetKeyUsage(KeyUsage::kDigitalSignature)
                                              .Sign(*ca_, *ca_key_)
                                              .value());
  }
  std::unique_ptr<PrivateKey> ca_key_;
  std::unique_ptr<PrivateKey> card_key_;
  std::unique_ptr<Certificate> ca_;
  std::unique_ptr<Certificate> card_;
};

TEST_F(Pkcs12Test, RoundTripWithChain) {
  Certificate chain[] = {*ca_};
  auto p12 = WritePkcs12(*card_key_, *card_, chain, "operator:alice", Pin("123456"), kFast);
  ASSERT_TRUE(p12.ok()) << p12.status();
  auto read = ReadPkcs12(*p12, Pin("123456"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->certificate == *card_);
  ASSERT_EQ(read->chain.size(), 1u);
  EXPECT_TRUE(read->chain[0] == *ca_);
  EXPECT_EQ(read->private_key.Type(), KeyType::kEcP256);
  EXPECT_TRUE(read->private_key.GetPublicKey() == card_key_->GetPublicKey());
  // The card still signs for the operator certificate's key.
  Bytes msg = {1, 2, 3};
  auto sig = EcdsaSign(read->private_key, msg);
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(EcdsaVerify(*card_->GetPublicKey(), msg, *sig).ok());
}

TEST_F(Pkcs12Test, RoundTripWithoutChainOrName) {
  auto p12 = WritePkcs12(*card_key_, *card_, {}, "", Pin("0000"), kFast);
  ASSERT_TRUE(p12.ok()) << p12.status();
  auto read = ReadPkcs12(*p12, Pin("0000"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->chain.empty());
  EXPECT_TRUE(read->certificate == *card_);
}

TEST_F(Pkcs12Test, RsaKeyWithDefaultIterations) {
  auto key = GenerateRsaKey(2048);
  ASSERT_TRUE(key.ok());
  auto cert = CertificateBuilder()
                  .SetSubjectCommonName("admin:carol")
                  .SetSerial(Bytes{3})
                  .SetValidity(kNow, kNow + 86400)
                  .SetPublicKey(key->GetPublicKey())
                  .Sign(*ca_, *ca_key_);
  ASSERT_TRUE(cert.ok()) << cert.status();
  auto p12 = WritePkcs12(*key, *cert, {}, "admin", Pin("correct horse"));
  ASSERT_TRUE(p12.ok()) << p12.status();
  auto read = ReadPkcs12(*p12, Pin("correct horse"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->private_key.Type(), KeyType::kRsa);
  EXPECT_TRUE(read->private_key.GetPublicKey() == key->GetPublicKey());
  // Default iteration count is what the MAC records.
  const unsigned char* p = p12->data();
  Pkcs12Ptr parsed(d2i_PKCS12(nullptr, &p, static_cast<long>(p12->size())));
  ASSERT_NE(parsed, nullptr);
  const ASN1_INTEGER* iter = nullptr;
  const X509_ALGOR* mac_alg = nullptr;
  PKCS12_get0_mac(nullptr, &mac_alg, nullptr, &iter, parsed.get());
  ASSERT_NE(iter, nullptr);
  EXPECT_EQ(ASN1_INTEGER_get(iter), Pkcs12WriteOptions{}.iterations);
  const ASN1_OBJECT* md = nullptr;
  X509_ALGOR_get0(&md, nullptr, nullptr, mac_alg);
  EXPECT_EQ(OBJ_obj2nid(md), NID_sha256);
}

TEST_F(Pkcs12Test, WrongPinIsOneUniformError) {
  auto p12 = WritePkcs12(*card_key_, *card_, {}, "card", Pin("123456"), kFast);
  ASSERT_TRUE(p12.ok());
  for (std::string_view wrong : {"123457", "12345", "1234567", "x"}) {
    auto read = ReadPkcs12(*p12, Pin(wrong));
    ASSERT_FALSE(read.ok()) << wrong;
    EXPECT_EQ(read.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(read.status().message(), "wrong PIN or corrupted PKCS#12");
  }
}

TEST_F(Pkcs12Test, CorruptedFileFails) {
  auto p12 = WritePkcs12(*card_key_, *card_, {}, "card", Pin("123456"), kFast);
  ASSERT_TRUE(p12.ok());
  for (size_t pos = 40; pos < p12->size(); pos += 97) {
    Bytes bad = *p12;
    bad[pos] ^= 0x01;
    auto read = ReadPkcs12(bad, Pin("123456"));
    ASSERT_FALSE(read.ok()) << "byte " << pos;
    EXPECT_TRUE(read.status().code() == absl::StatusCode::kUnauthenticated ||
                read.status().code() == absl::StatusCode::kInvalidArgument)
        << read.status();
  }
}

TEST_F(Pkcs12Test, GarbageIsInvalidArgument) {
  EXPECT_EQ(ReadPkcs12(Bytes{}, Pin("1")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadPkcs12(Bytes{0x30, 0x03, 0x02, 0x01, 0x03}, Pin("1")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadPkcs12(AsBytes("definitely not a pkcs12 file"), Pin("1")).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A certificate is DER too, but not PKCS#12.
  EXPECT_EQ(ReadPkcs12(card_->ToDer(), Pin("1")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(Pkcs12Test, PrivateKeyNeverInClear) {
  auto p12 = WritePkcs12(*card_key_, *card_, {}, "card", Pin("123456"), kFast);
  ASSERT_TRUE(p12.ok());
  auto pkcs8 = card_key_->ExportPkcs8DerSecret();
  ASSERT_TRUE(pkcs8.ok());
  std::span<const uint8_t> clear = pkcs8->RevealSecret();
  EXPECT_FALSE(Contains(*p12, clear));
  // Nor any 16-byte window of it past the fixed PKCS#8 header (covers the raw scalar).
  for (size_t off = 20; off + 16 <= clear.size(); off += 8) {
    EXPECT_FALSE(Contains(*p12, clear.subspan(off, 16))) << "window at " << off;
  }
}

TEST_F(Pkcs12Test, UsesModernAlgorithmsOnly) {
  auto p12 = WritePkcs12(*card_key_, *card_, {}, "card", Pin("123456"), kFast);
  ASSERT_TRUE(p12.ok());
  const Bytes kPbes2 = {0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x05, 0x0D};
  const Bytes kAes256Cbc = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2A};
  const Bytes kHmacSha256 = {0x06, 0x08, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x02, 0x09};
  const Bytes kPkcs12PbePrefix = {0x06, 0x0A, 0x2A, 0x86, 0x48, 0x86,
                                  0xF7, 0x0D, 0x01, 0x0C, 0x01};  // pbeWithSHAAnd*
  EXPECT_TRUE(Contains(*p12, kPbes2));
  EXPECT_TRUE(Contains(*p12, kAes256Cbc));
  EXPECT_TRUE(Contains(*p12, kHmacSha256));
  EXPECT_FALSE(Contains(*p12, kPkcs12PbePrefix));
}

TEST_F(Pkcs12Test, WriteValidatesInputs) {
  EXPECT_EQ(WritePkcs12(*card_key_, *card_, {}, "", Pin(""), kFast).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WritePkcs12(*card_key_, *card_, {}, "", SecretBytes::CopyOf(Bytes{'1', 0, '2'}), kFast)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Key and certificate must belong together.
  EXPECT_EQ(WritePkcs12(*ca_key_, *card_, {}, "", Pin("1234"), kFast).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadPkcs12(Bytes{1}, Pin("")).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::crypto
