#include "rkl/crypto/x509.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_csr.h"
#include "rkl/crypto/x509_verify.h"

namespace rkl::crypto {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kNow = 1'750'000'000;  // 2025-06-15
constexpr int64_t kDay = 86'400;
constexpr int64_t kYear = 365 * kDay;

// A terminal-root (HsmRCRT) and an HSM work certificate (HsmWCRT) as PROTOCOL.md §2 has them,
// shared by the suite because RSA key generation is slow.
class X509Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_key_ = new PrivateKey(GenerateRsaKey(2048).value());
    work_key_ = new PrivateKey(GenerateRsaKey(2048).value());
    other_root_key_ = new PrivateKey(GenerateRsaKey(2048).value());
    root_ = new Certificate(MakeRoot(*root_key_, "terminal-root", Bytes{0x01}).value());
    other_root_ = new Certificate(MakeRoot(*other_root_key_, "terminal-root", Bytes{0x02}).value());
    work_ = new Certificate(MakeWork(Bytes{0x10, 0x00, 0xAB}).value());
  }
  static void TearDownTestSuite() {
    delete work_;
    delete other_root_;
    delete root_;
    delete other_root_key_;
    delete work_key_;
    delete root_key_;
  }

  static absl::StatusOr<Certificate> MakeRoot(const PrivateKey& key, std::string cn, Bytes serial,
                                              std::optional<int> path_len = 0) {
    return CertificateBuilder()
        .SetSubjectCommonName(std::move(cn))
        .SetSubjectOrganization("rkl")
        .SetSerial(std::move(serial))
        .SetValidity(kNow - kDay, kNow + 10 * kYear)
        .SetBasicConstraints(/*is_ca=*/true, path_len, /*critical=*/true)
        .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign, /*critical=*/true)
        .SelfSign(key);
  }

  static absl::StatusOr<Certificate> MakeWork(Bytes serial, int64_t not_after = kNow + kYear) {
    return CertificateBuilder()
        .SetSubjectCommonName("hsm-work:hsm1:7")
        .SetSerial(std::move(serial))
        .SetValidity(kNow - kDay, not_after)
        .SetPublicKey(work_key_->GetPublicKey())
        .SetBasicConstraints(/*is_ca=*/false, std::nullopt, /*critical=*/true)
        .SetKeyUsage(KeyUsage::kKeyEncipherment, /*critical=*/true)
        .Sign(*root_, *root_key_);
  }

  // A builder for `cn` with `serial`, valid from a day before kNow for a year.
  static CertificateBuilder YearLong(std::string cn, Bytes serial) {
    CertificateBuilder b;
    b.SetSubjectCommonName(std::move(cn))
        .SetSerial(std::move(serial))
        .SetValidity(kNow - kDay, kNow + kYear);
    return b;
  }

  static absl::StatusOr<Crl> MakeCrl(std::vector<Bytes> revoked, int64_t next_update) {
    CrlBuilder b;
    for (Bytes& s : revoked) b.AddRevoked(std::move(s), kNow - 60, CrlReason::kKeyCompromise);
    return b.SetLastUpdate(kNow - 3600)
        .SetNextUpdate(next_update)
        .SetCrlNumber(42)
        .Sign(*root_, *root_key_);
  }

  static PrivateKey* root_key_;
  static PrivateKey* work_key_;
  static PrivateKey* other_root_key_;
  static Certificate* root_;
  static Certificate* other_root_;
  static Certificate* work_;
};
PrivateKey* X509Test::root_key_ = nullptr;
PrivateKey* X509Test::work_key_ = nullptr;
PrivateKey* X509Test::other_root_key_ = nullptr;
Certificate* X509Test::root_ = nullptr;
Certificate* X509Test::other_root_ = nullptr;
Certificate* X509Test::work_ = nullptr;

// A failed status with `code` whose message contains `text`.
MATCHER_P2(FailsWith, code, text,
           "fails with " + absl::StatusCodeToString(code) + " saying \"" + std::string(text) +
               "\"") {
  *result_listener << "the status is " << arg;
  return arg.code() == code && std::string(arg.message()).find(text) != std::string::npos;
}

// VerifyChain of `leaf` directly under the one trusted root `root` (no intermediates).
absl::Status VerifyUnder(const Certificate& leaf, const Certificate& root, int64_t at_time = kNow,
                         std::span<const Crl> crls = {}) {
  Certificate roots[] = {root};
  return VerifyChain(leaf, {}, roots, crls, at_time);
}

Bytes Sha256(std::span<const uint8_t> data) {
  Bytes md(SHA256_DIGEST_LENGTH);
  SHA256(data.data(), data.size(), md.data());
  return md;
}

// ---- accessors ------------------------------------------------------------------------------

TEST_F(X509Test, RootAccessors) {
  const Certificate& c = *root_;
  EXPECT_EQ(c.SerialHex(), "01");
  EXPECT_EQ(c.SerialBytes(), Bytes{0x01});
  EXPECT_EQ(c.SubjectCommonName(), "terminal-root");
  EXPECT_EQ(c.IssuerCommonName(), "terminal-root");
  EXPECT_EQ(c.SubjectDn(), "CN=terminal-root,O=rkl");
  EXPECT_EQ(c.IssuerDn(), "CN=terminal-root,O=rkl");
  EXPECT_EQ(c.NotBefore(), kNow - kDay);
  EXPECT_EQ(c.NotAfter(), kNow + 10 * kYear);
  EXPECT_TRUE(c.HasBasicConstraints());
  EXPECT_TRUE(c.BasicConstraintsCritical());
  EXPECT_TRUE(c.IsCa());
  EXPECT_EQ(c.PathLength(), 0);
  EXPECT_TRUE(c.HasKeyUsage());
  EXPECT_TRUE(c.KeyUsageCritical());
  EXPECT_EQ(c.KeyUsageBits(), KeyUsage::kKeyCertSign | KeyUsage::kCrlSign);
  EXPECT_FALSE(c.HasExtendedKeyUsage());
  EXPECT_EQ(c.ExtendedKeyUsages(), ExtendedKeyUsage::kNone);
  EXPECT_TRUE(c.DnsNames().empty());
  EXPECT_EQ(c.SubjectKeyId().size(), 20u);
  EXPECT_EQ(c.AuthorityKeyId(), c.SubjectKeyId());
  EXPECT_TRUE(c.IsSelfSigned());
  auto pub = c.GetPublicKey();
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(*pub == root_key_->GetPublicKey());
  EXPECT_EQ(pub->Type(), KeyType::kRsa);
  EXPECT_EQ(pub->Bits(), 2048);
  EXPECT_EQ(c.Sha256Fingerprint(), Sha256(c.ToDer()));
}

TEST_F(X509Test, WorkCertificateAccessors) {
  const Certificate& c = *work_;
  EXPECT_EQ(c.SerialHex(), "1000AB");
  EXPECT_EQ(c.SubjectCommonName(), "hsm-work:hsm1:7");
  EXPECT_EQ(c.IssuerCommonName(), "terminal-root");
  EXPECT_EQ(c.SubjectDn(), "CN=hsm-work:hsm1:7");
  EXPECT_EQ(c.IssuerDn(), "CN=terminal-root,O=rkl");
  EXPECT_EQ(c.NotBefore(), kNow - kDay);
  EXPECT_EQ(c.NotAfter(), kNow + kYear);
  EXPECT_TRUE(c.HasBasicConstraints());
  EXPECT_FALSE(c.IsCa());
  EXPECT_EQ(c.PathLength(), std::nullopt);
  EXPECT_TRUE(c.KeyUsageCritical());
  // PROTOCOL.md §2: exactly keyEncipherment.
  EXPECT_EQ(c.KeyUsageBits(), KeyUsage::kKeyEncipherment);
  EXPECT_TRUE(HasAll(c.KeyUsageBits(), KeyUsage::kKeyEncipherment));
  EXPECT_FALSE(HasAll(c.KeyUsageBits(), KeyUsage::kDigitalSignature));
  EXPECT_EQ(c.AuthorityKeyId(), root_->SubjectKeyId());
  EXPECT_NE(c.SubjectKeyId(), root_->SubjectKeyId());
  EXPECT_FALSE(c.IsSelfSigned());
  auto pub = c.GetPublicKey();
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(*pub == work_key_->GetPublicKey());
  EXPECT_NE(c.Sha256Fingerprint(), root_->Sha256Fingerprint());
}

TEST_F(X509Test, ServiceCertificateWithEcIssuer) {
  auto ca_key = GenerateEcP256Key();
  auto svc_key = GenerateEcP256Key();
  ASSERT_TRUE(ca_key.ok() && svc_key.ok());
  auto ca = YearLong("service-ca", Bytes{0x05})
                .SetBasicConstraints(true, std::nullopt)
                .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign)
                .SelfSign(*ca_key);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ(ca->PathLength(), std::nullopt);
  auto svc = CertificateBuilder()
                 .SetSubjectCommonName("hsm-mtms")
                 .SetSerial(Bytes{0x7F, 0xFF})
                 .SetValidity(kNow - kDay, kNow + 30 * kDay)
                 .SetPublicKey(svc_key->GetPublicKey())
                 .SetBasicConstraints(false, std::nullopt)
                 .SetKeyUsage(KeyUsage::kDigitalSignature | KeyUsage::kKeyAgreement)
                 .SetExtendedKeyUsage(ExtendedKeyUsage::kServerAuth | ExtendedKeyUsage::kClientAuth)
                 .AddDnsName("hsm-mtms")
                 .AddDnsName("hsm-mtms.rkl.internal")
                 .Sign(*ca, *ca_key);
  ASSERT_TRUE(svc.ok()) << svc.status();
  EXPECT_THAT(svc->DnsNames(), ElementsAre("hsm-mtms", "hsm-mtms.rkl.internal"));
  EXPECT_TRUE(svc->HasExtendedKeyUsage());
  EXPECT_EQ(svc->ExtendedKeyUsages(),
            ExtendedKeyUsage::kServerAuth | ExtendedKeyUsage::kClientAuth);
  EXPECT_EQ(svc->KeyUsageBits(), KeyUsage::kDigitalSignature | KeyUsage::kKeyAgreement);
  EXPECT_EQ(svc->GetPublicKey()->Type(), KeyType::kEcP256);
  EXPECT_TRUE(VerifyUnder(*svc, *ca).ok());
}

// ---- parsing --------------------------------------------------------------------------------

TEST_F(X509Test, PemAndDerRoundTrip) {
  std::string pem = work_->ToPem();
  EXPECT_THAT(pem, HasSubstr("-----BEGIN CERTIFICATE-----"));
  auto from_pem = Certificate::FromPem(pem);
  ASSERT_TRUE(from_pem.ok()) << from_pem.status();
  EXPECT_TRUE(*from_pem == *work_);
  auto from_der = Certificate::FromDer(work_->ToDer());
  ASSERT_TRUE(from_der.ok()) << from_der.status();
  EXPECT_TRUE(*from_der == *work_);
  EXPECT_EQ(from_der->ToDer(), work_->ToDer());
  auto parsed_pem = Certificate::Parse(AsBytes(pem));
  ASSERT_TRUE(parsed_pem.ok());
  EXPECT_TRUE(*parsed_pem == *work_);
  Bytes der = work_->ToDer();
  auto parsed_der = Certificate::Parse(der);
  ASSERT_TRUE(parsed_der.ok());
  EXPECT_TRUE(*parsed_der == *work_);
  EXPECT_FALSE(*work_ == *root_);
  Certificate copy = *work_;  // shares the X509
  EXPECT_TRUE(copy == *work_);
}

TEST_F(X509Test, GarbageIsInvalidArgument) {
  EXPECT_EQ(Certificate::FromDer(Bytes{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Certificate::FromDer(Bytes{0x30, 0x82, 0x01}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Certificate::FromPem("hello").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Certificate::FromPem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  Bytes trailing = work_->ToDer();
  trailing.push_back(0);
  EXPECT_EQ(Certificate::FromDer(trailing).status().code(), absl::StatusCode::kInvalidArgument);
  Bytes truncated = work_->ToDer();
  truncated.pop_back();
  EXPECT_EQ(Certificate::FromDer(truncated).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(X509Test, PemBundle) {
  std::string bundle = work_->ToPem() + root_->ToPem();
  auto certs = Certificate::ParsePemBundle(bundle);
  ASSERT_TRUE(certs.ok()) << certs.status();
  ASSERT_EQ(certs->size(), 2u);
  EXPECT_TRUE((*certs)[0] == *work_);
  EXPECT_TRUE((*certs)[1] == *root_);
  // FromPem insists on exactly one.
  EXPECT_EQ(Certificate::FromPem(bundle).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- builder validation ---------------------------------------------------------------------

TEST_F(X509Test, BuilderRejectsBadFields) {
  auto base = [&] {
    CertificateBuilder b;
    b.SetSubjectCommonName("x").SetSerial(Bytes{1}).SetValidity(kNow, kNow + 1);
    return b;
  };
  auto code = [](const absl::StatusOr<Certificate>& r) { return r.status().code(); };
  EXPECT_TRUE(base().SelfSign(*root_key_).ok());
  EXPECT_EQ(code(base().SetSubjectCommonName("").SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().SetSubjectCommonName(std::string(65, 'a')).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().SetSerial(Bytes{}).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().SetSerial(Bytes{0, 0}).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().SetSerial(Bytes(20, 0xFF)).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(base().SetSerial(Bytes(20, 0x7F)).SelfSign(*root_key_).ok());
  EXPECT_EQ(code(base().SetValidity(kNow, kNow).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().SetBasicConstraints(false, 0).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(base().AddDnsName("has space").SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  // Self-signed must carry the signing key.
  EXPECT_EQ(code(base().SetPublicKey(work_key_->GetPublicKey()).SelfSign(*root_key_)),
            absl::StatusCode::kInvalidArgument);
  // Issued: public key required, issuer key must match the issuer certificate.
  EXPECT_EQ(code(base().Sign(*root_, *root_key_)), absl::StatusCode::kInvalidArgument);
  auto mismatch = base().SetPublicKey(work_key_->GetPublicKey()).Sign(*root_, *work_key_);
  EXPECT_EQ(code(mismatch), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("issuer_key"));
}

// ---- chain verification ---------------------------------------------------------------------

TEST_F(X509Test, ChainVerifies) {
  absl::Status s = VerifyUnder(*work_, *root_);
  EXPECT_TRUE(s.ok()) << s;
  // Also with both roots offered: the right one is found.
  Certificate both[] = {*other_root_, *root_};
  EXPECT_TRUE(VerifyChain(*work_, {}, both, {}, kNow).ok());
}

TEST_F(X509Test, WrongRootFails) {
  // Same subject name, different key: only the signature tells them apart.
  EXPECT_THAT(VerifyUnder(*work_, *other_root_),
              FailsWith(absl::StatusCode::kUnauthenticated, "certificate chain:"));
}

TEST_F(X509Test, UnrelatedRootFails) {
  auto key = GenerateEcP256Key();
  auto unrelated = MakeRoot(*key, "operator-ca", Bytes{9});
  ASSERT_TRUE(unrelated.ok()) << unrelated.status();
  EXPECT_THAT(VerifyUnder(*work_, *unrelated), FailsWith(absl::StatusCode::kUnauthenticated,
                                                         "unable to get local issuer certificate"));
}

TEST_F(X509Test, ExpiredAndNotYetValidFail) {
  EXPECT_THAT(VerifyUnder(*work_, *root_, work_->NotAfter() + 1),
              FailsWith(absl::StatusCode::kFailedPrecondition, "certificate has expired"));
  EXPECT_THAT(VerifyUnder(*work_, *root_, work_->NotBefore() - 1),
              FailsWith(absl::StatusCode::kFailedPrecondition, "not yet valid"));
  EXPECT_TRUE(VerifyUnder(*work_, *root_, work_->NotAfter() - 1).ok());
}

TEST_F(X509Test, TamperedCertificateSignatureFails) {
  Bytes der = work_->ToDer();
  der[der.size() - 5] ^= 0x01;  // inside the signature BIT STRING
  auto tampered = Certificate::FromDer(der);
  ASSERT_TRUE(tampered.ok());
  EXPECT_THAT(VerifyUnder(*tampered, *root_),
              FailsWith(absl::StatusCode::kUnauthenticated, "signature failure"));
}

TEST_F(X509Test, IntermediateAndPathLength) {
  auto make_chain = [&](std::optional<int> root_path_len) -> absl::Status {
    auto root = MakeRoot(*root_key_, "root", Bytes{0x21}, root_path_len);
    if (!root.ok()) return root.status();
    auto inter_key = GenerateEcP256Key();
    auto inter = YearLong("operator-ca", Bytes{0x22})
                     .SetPublicKey(inter_key->GetPublicKey())
                     .SetBasicConstraints(true, 0)
                     .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign)
                     .Sign(*root, *root_key_);
    if (!inter.ok()) return inter.status();
    auto op_key = GenerateEcP256Key();
    auto op = YearLong("operator:alice", Bytes{0x23})
                  .SetPublicKey(op_key->GetPublicKey())
                  .SetKeyUsage(KeyUsage::kDigitalSignature)
                  .Sign(*inter, *inter_key);
    if (!op.ok()) return op.status();
    Certificate roots[] = {*root};
    Certificate inters[] = {*inter};
    // Without the intermediate the path cannot be built.
    absl::Status missing = VerifyChain(*op, {}, roots, {}, kNow);
    if (missing.code() != absl::StatusCode::kUnauthenticated) {
      return absl::InternalError("chain without intermediate should fail");
    }
    return VerifyChain(*op, inters, roots, {}, kNow);
  };
  EXPECT_TRUE(make_chain(1).ok());
  EXPECT_TRUE(make_chain(std::nullopt).ok());
  EXPECT_THAT(make_chain(0),
              FailsWith(absl::StatusCode::kUnauthenticated, "path length constraint exceeded"));
}

TEST_F(X509Test, StrictModeRejectsNonCriticalCaBasicConstraints) {
  auto root = YearLong("lax-root", Bytes{0x31})
                  .SetBasicConstraints(true, 0, /*critical=*/false)
                  .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign)
                  .SelfSign(*other_root_key_);
  ASSERT_TRUE(root.ok());
  EXPECT_FALSE(root->BasicConstraintsCritical());
  auto leaf = YearLong("leaf", Bytes{0x32})
                  .SetPublicKey(work_key_->GetPublicKey())
                  .Sign(*root, *other_root_key_);
  ASSERT_TRUE(leaf.ok());
  EXPECT_THAT(VerifyUnder(*leaf, *root),
              FailsWith(absl::StatusCode::kUnauthenticated, "not marked critical"));
}

// ---- CRLs -----------------------------------------------------------------------------------

TEST_F(X509Test, CrlRevokedFailsUnrevokedPasses) {
  auto other = MakeWork(Bytes{0x10, 0x00, 0xAC});
  ASSERT_TRUE(other.ok());
  auto crl = MakeCrl({work_->SerialBytes()}, kNow + 7 * kDay);
  ASSERT_TRUE(crl.ok()) << crl.status();
  Crl crls[] = {*crl};
  EXPECT_THAT(VerifyUnder(*work_, *root_, kNow, crls),
              FailsWith(absl::StatusCode::kFailedPrecondition, "certificate revoked"));
  absl::Status fine = VerifyUnder(*other, *root_, kNow, crls);
  EXPECT_TRUE(fine.ok()) << fine;
}

TEST_F(X509Test, CrlMustBeCurrentAndFromTheIssuer) {
  auto crl = MakeCrl({}, kNow + 7 * kDay);
  ASSERT_TRUE(crl.ok());
  Crl crls[] = {*crl};
  EXPECT_THAT(VerifyUnder(*work_, *root_, kNow + 8 * kDay, crls),
              FailsWith(absl::StatusCode::kFailedPrecondition, "CRL has expired"));

  // A CRL from another issuer does not count: no CRL for the leaf's issuer.
  auto foreign = CrlBuilder()
                     .SetLastUpdate(kNow - 60)
                     .SetNextUpdate(kNow + kDay)
                     .Sign(*other_root_, *other_root_key_);
  ASSERT_TRUE(foreign.ok());
  Crl foreign_crls[] = {*foreign};
  Certificate both[] = {*root_, *other_root_};
  EXPECT_THAT(VerifyChain(*work_, {}, both, foreign_crls, kNow),
              FailsWith(absl::StatusCode::kFailedPrecondition, "unable to get certificate CRL"));
}

TEST_F(X509Test, CrlAccessorsAndRoundTrip) {
  CrlBuilder b;
  b.AddRevoked(Bytes{0x10, 0x00, 0xAB}, kNow - 60, CrlReason::kKeyCompromise)
      .AddRevoked(Bytes{0x05}, kNow - 120)
      .SetLastUpdate(kNow - 3600)
      .SetNextUpdate(kNow + kDay)
      .SetCrlNumber(7);
  auto crl = b.Sign(*root_, *root_key_);
  ASSERT_TRUE(crl.ok()) << crl.status();
  EXPECT_EQ(crl->IssuerCommonName(), "terminal-root");
  EXPECT_EQ(crl->IssuerDn(), "CN=terminal-root,O=rkl");
  EXPECT_EQ(crl->LastUpdate(), kNow - 3600);
  EXPECT_EQ(crl->NextUpdate(), kNow + kDay);
  EXPECT_EQ(crl->CrlNumber(), 7u);
  EXPECT_TRUE(crl->IsRevoked(Bytes{0x10, 0x00, 0xAB}));
  EXPECT_TRUE(crl->IsRevoked(Bytes{0x00, 0x05}));  // leading zero: same number
  EXPECT_FALSE(crl->IsRevoked(Bytes{0x06}));
  EXPECT_FALSE(crl->IsRevoked(Bytes{}));
  EXPECT_TRUE(crl->IsRevoked(*work_));
  EXPECT_FALSE(crl->IsRevoked(*root_));
  auto entries = crl->Entries();
  ASSERT_EQ(entries.size(), 2u);
  // Sorted by serial.
  EXPECT_EQ(entries[0].serial, Bytes{0x05});
  EXPECT_EQ(entries[0].reason, CrlReason::kUnspecified);
  EXPECT_EQ(entries[0].revocation_time, kNow - 120);
  EXPECT_EQ(entries[1].serial, (Bytes{0x10, 0x00, 0xAB}));
  EXPECT_EQ(entries[1].reason, CrlReason::kKeyCompromise);
  EXPECT_TRUE(crl->VerifySignature(*root_).ok());
  EXPECT_EQ(crl->VerifySignature(*other_root_).code(), absl::StatusCode::kUnauthenticated);

  auto from_pem = Crl::FromPem(crl->ToPem());
  ASSERT_TRUE(from_pem.ok()) << from_pem.status();
  EXPECT_EQ(from_pem->ToDer(), crl->ToDer());
  auto from_der = Crl::Parse(crl->ToDer());
  ASSERT_TRUE(from_der.ok());
  EXPECT_TRUE(from_der->IsRevoked(*work_));
  EXPECT_EQ(Crl::FromDer(Bytes{1, 2, 3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Crl::FromPem("nope").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(X509Test, CrlBuilderValidates) {
  EXPECT_EQ(CrlBuilder().Sign(*root_, *root_key_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      CrlBuilder().SetLastUpdate(kNow).SetNextUpdate(kNow).Sign(*root_, *root_key_).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CrlBuilder().SetLastUpdate(kNow).Sign(*root_, *work_key_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CrlBuilder()
                .SetLastUpdate(kNow)
                .AddRevoked(Bytes{0}, kNow)
                .Sign(*root_, *root_key_)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- CSRs -----------------------------------------------------------------------------------

TEST_F(X509Test, CsrRoundTripAndSelfSignature) {
  auto csr = CsrBuilder()
                 .SetSubjectCommonName("hsm-work:hsm1:8")
                 .SetSubjectOrganization("rkl")
                 .Sign(*work_key_);
  ASSERT_TRUE(csr.ok()) << csr.status();
  EXPECT_EQ(csr->SubjectCommonName(), "hsm-work:hsm1:8");
  EXPECT_EQ(csr->SubjectDn(), "CN=hsm-work:hsm1:8,O=rkl");
  EXPECT_TRUE(csr->VerifySelfSignature().ok());
  auto pub = csr->GetPublicKey();
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(*pub == work_key_->GetPublicKey());

  std::string pem = csr->ToPem();
  EXPECT_THAT(pem, HasSubstr("-----BEGIN CERTIFICATE REQUEST-----"));
  auto from_pem = Csr::Parse(AsBytes(pem));
  ASSERT_TRUE(from_pem.ok()) << from_pem.status();
  EXPECT_EQ(from_pem->ToDer(), csr->ToDer());
  EXPECT_TRUE(from_pem->VerifySelfSignature().ok());
  auto from_der = Csr::Parse(csr->ToDer());
  ASSERT_TRUE(from_der.ok());
  Csr copy = *from_der;
  EXPECT_EQ(copy.ToDer(), csr->ToDer());
}

TEST_F(X509Test, CsrWithCorruptSignatureRejected) {
  auto csr = CsrBuilder().SetSubjectCommonName("mtms").Sign(*work_key_);
  ASSERT_TRUE(csr.ok());
  Bytes der = csr->ToDer();
  der[der.size() - 10] ^= 0x40;  // inside the RSA signature value
  auto bad = Csr::FromDer(der);
  ASSERT_TRUE(bad.ok()) << bad.status();  // parses; only the signature is wrong
  absl::Status s = bad->VerifySelfSignature();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("signature"));
}

TEST_F(X509Test, EcCsrWithCorruptSignatureRejected) {
  auto key = GenerateEcP256Key();
  auto csr = CsrBuilder().SetSubjectCommonName("operator:bob").Sign(*key);
  ASSERT_TRUE(csr.ok());
  EXPECT_TRUE(csr->VerifySelfSignature().ok());
  Bytes der = csr->ToDer();
  der.back() ^= 0x01;  // last byte of s: DER stays well-formed
  auto bad = Csr::FromDer(der);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->VerifySelfSignature().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(X509Test, CsrSignedByAnotherKeyRejected) {
  // Splice: the request body of one key with the signature made by another.
  auto a = CsrBuilder().SetSubjectCommonName("same").Sign(*work_key_);
  auto b = CsrBuilder().SetSubjectCommonName("same").Sign(*other_root_key_);
  ASSERT_TRUE(a.ok() && b.ok());
  Bytes da = a->ToDer();
  Bytes db = b->ToDer();
  ASSERT_EQ(da.size(), db.size());  // same layout for equal-size RSA keys
  std::copy(db.end() - 256, db.end(), da.end() - 256);
  auto spliced = Csr::FromDer(da);
  ASSERT_TRUE(spliced.ok());
  EXPECT_EQ(spliced->VerifySelfSignature().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(X509Test, CsrGarbageIsInvalidArgument) {
  EXPECT_EQ(Csr::Parse(Bytes{0x30, 0x00}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Csr::FromPem("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CsrBuilder().Sign(*work_key_).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- cross-check with the openssl command line ----------------------------------------------

TEST_F(X509Test, OpensslCliAgrees) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
  auto dir =
      std::filesystem::temp_directory_path() / ("rkl_x509_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
  };
  write("root.pem", root_->ToPem());
  write("work.pem", work_->ToPem());
  auto crl = MakeCrl({work_->SerialBytes()}, kNow + 7 * kDay);
  ASSERT_TRUE(crl.ok());
  write("crl.pem", crl->ToPem());
  std::string base = "openssl verify -x509_strict -attime " + std::to_string(kNow) + " -CAfile " +
                     (dir / "root.pem").string();
  std::string quiet = " >/dev/null 2>&1";
  EXPECT_EQ(std::system((base + " " + (dir / "work.pem").string() + quiet).c_str()), 0);
  EXPECT_NE(std::system((base + " -crl_check -CRLfile " + (dir / "crl.pem").string() + " " +
                         (dir / "work.pem").string() + quiet)
                            .c_str()),
            0);
  std::string text_cmd = "openssl x509 -noout -text -in " + (dir / "work.pem").string() +
                         " | grep -q 'Key Encipherment'";
  EXPECT_EQ(std::system(text_cmd.c_str()), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace rkl::crypto
