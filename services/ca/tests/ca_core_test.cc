// CaCore against the in-memory repository, a fixed clock and a scripted serial source.

#include "ca_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>

#include "absl/strings/ascii.h"
#include "fake_ca_repository.h"
#include "fake_hsm_key_source.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_verify.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

using testing::CsrPem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MismatchedCsrPem;

constexpr int64_t kStart = 1'750'000'000;  // 2025-06-15
constexpr int64_t kDay = 86'400;

class CaCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    master_key_.emplace(MasterKey::FromSecret(crypto::RandomSecret(32)).value());
    // RSA-2048 root keeps the suite fast; the default (3072) is checked in the pgtests.
    policy_.terminal_root_key = KeySpec::kRsa2048;
    policy_.kdh_ca_key = KeySpec::kRsa2048;
    MakeCore();
  }

  void MakeCore() {
    core_.emplace(
        &repo_, &*master_key_, policy_, [this] { return absl::FromUnixSeconds(now_); },
        [this](std::span<uint8_t> out) {
          if (!scripted_serials_.empty()) {
            Bytes s = scripted_serials_.front();
            scripted_serials_.pop_front();
            std::copy(s.begin(), s.end(), out.begin());
          } else {
            crypto::FillRandom(out);
          }
        },
        &hsm_keys_);
  }

  BootstrapResult Bootstrap() {
    BootstrapRequest req;
    req.admin_names = {"alice", "bob"};
    req.custodian_names = {"carol", "dave"};
    req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes("1234"));
    req.pkcs12_iterations = 1000;
    auto result = core_->Bootstrap(req);
    EXPECT_TRUE(result.ok()) << result.status();
    return *std::move(result);
  }

  absl::StatusOr<crypto::Certificate> IssueWork(const crypto::PrivateKey& key, uint32_t days = 0) {
    return core_->IssueWorkCertificate({key.GetPublicKey().ToDer(), "hsm-mtms", 7, days});
  }
  // A KDH key HSM hsm-kms holds at index 3.
  absl::StatusOr<crypto::Certificate> IssueKdh(const crypto::PrivateKey& key, uint32_t days = 0) {
    hsm_keys_.Put("hsm-kms", 3, key.GetPublicKey());
    return core_->IssueKdhCertificate({key.GetPublicKey().ToDer(), "hsm-kms", 3, days});
  }

  FakeCaRepository repo_;
  FakeHsmKeySource hsm_keys_;
  std::optional<MasterKey> master_key_;
  CaPolicy policy_;
  int64_t now_ = kStart;
  std::deque<Bytes> scripted_serials_;
  std::optional<CaCore> core_;
};

TEST_F(CaCoreTest, NotInitialisedCaRefusesEverythingButBootstrap) {
  EXPECT_EQ(core_->CheckReady().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(core_->CheckReady().message(), HasSubstr("rklctl pki init"));
  EXPECT_EQ(core_->GetIssuerCertificate(IssuerId::kTerminalRoot).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto key = crypto::GenerateRsaKey(2048).value();
  EXPECT_EQ(IssueWork(key).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->GetCrl(IssuerId::kOperatorCa).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CaCoreTest, BootstrapCreatesFourSelfSignedIssuersAndRecordsEverything) {
  BootstrapResult r = Bootstrap();
  EXPECT_TRUE(core_->CheckReady().ok());
  for (const crypto::Certificate* c :
       {&r.terminal_root, &r.kdh_ca, &r.operator_ca, &r.service_ca}) {
    EXPECT_TRUE(c->IsSelfSigned());
    EXPECT_TRUE(c->IsCa());
    EXPECT_TRUE(c->BasicConstraintsCritical());
    EXPECT_EQ(c->PathLength(), 0);
    EXPECT_TRUE(c->KeyUsageCritical());
    EXPECT_EQ(c->KeyUsageBits(), crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
    EXPECT_FALSE(c->HasExtendedKeyUsage());
  }
  EXPECT_EQ(r.terminal_root.SubjectCommonName(), "terminal-root");
  EXPECT_EQ(r.terminal_root.GetPublicKey()->Type(), crypto::KeyType::kRsa);
  EXPECT_EQ(r.operator_ca.SubjectCommonName(), "operator-ca");
  EXPECT_EQ(r.operator_ca.GetPublicKey()->Type(), crypto::KeyType::kEcP256);
  EXPECT_EQ(r.service_ca.SubjectDn(), "CN=service-ca,O=rkl");
  EXPECT_EQ(r.terminal_root.NotAfter(), kStart + 7300 * kDay);
  EXPECT_EQ(r.kdh_ca.SubjectDn(), "CN=kdh-ca,O=rkl");
  EXPECT_EQ(r.kdh_ca.GetPublicKey()->Type(), crypto::KeyType::kRsa);
  EXPECT_EQ(r.kdh_ca.NotAfter(), kStart + 7300 * kDay);
  EXPECT_EQ(*core_->GetIssuerCertificate(IssuerId::kKdhCa), r.kdh_ca);
  EXPECT_EQ(core_->GetCrl(IssuerId::kKdhCa)->crl_number, 1u);

  ASSERT_EQ(r.services.size(), 5u);
  for (const KeyAndCertificate& s : r.services) {
    EXPECT_EQ(s.certificate.SubjectCommonName(), s.name);
    EXPECT_THAT(s.certificate.DnsNames(), ElementsAre(s.name, "localhost"));
    EXPECT_EQ(s.certificate.IssuerCommonName(), "service-ca");
    EXPECT_TRUE(crypto::VerifyChain(s.certificate, {}, {&r.service_ca, 1}, {}, kStart).ok());
  }
  ASSERT_EQ(r.admins.size(), 2u);
  EXPECT_EQ(r.admins[0].certificate.SubjectCommonName(), "admin:alice");
  EXPECT_THAT(r.admins[0].certificate.DnsNames(), ElementsAre("admin:alice"));
  EXPECT_EQ(r.admins[1].certificate.SubjectCommonName(), "admin:bob");
  ASSERT_EQ(r.custodians.size(), 2u);
  EXPECT_EQ(r.custodians[0].certificate.SubjectCommonName(), "custodian:carol");
  EXPECT_THAT(r.custodians[1].certificate.DnsNames(), ElementsAre("custodian:dave"));
  EXPECT_TRUE(
      crypto::VerifyChain(r.custodians[0].certificate, {}, {&r.service_ca, 1}, {}, kStart).ok());
  EXPECT_EQ(r.operator_card.certificate.SubjectCommonName(), "operator:operator1");
  // 4 issuers + 5 services + 2 admins + 2 custodians + operator, all recorded.
  EXPECT_EQ(repo_.certificates().size(), 14u);
  // Each identity the bootstrap issued is in the audit trail.
  EXPECT_EQ(repo_.audit().size(), 10u);
  auto card = crypto::ReadPkcs12(r.operator_pkcs12, crypto::SecretBytes::CopyOf(AsBytes("1234")));
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->certificate, r.operator_card.certificate);
}

TEST_F(CaCoreTest, SecondBootstrapIsRefusedAndChangesNothing) {
  BootstrapResult r = Bootstrap();
  auto before = repo_.issuers().at(IssuerId::kTerminalRoot).certificate_der;
  BootstrapRequest req;
  req.admin_names = {"alice", "bob"};
  req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes("1234"));
  auto again = core_->Bootstrap(req);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("already initialised"));
  EXPECT_EQ(repo_.issuers().at(IssuerId::kTerminalRoot).certificate_der, before);
  EXPECT_EQ(repo_.initialize_calls, 1);
}

TEST_F(CaCoreTest, BootstrapValidatesItsRequestBeforeMakingKeys) {
  BootstrapRequest req;
  req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes("1234"));
  req.services = {"mtms", "pos"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.services = {"mtms", "mtms"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.services = {"mtms"};
  req.admin_names = {"root", "Root"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  // Dual control needs two distinct admins from the start.
  req.admin_names = {"root"};
  EXPECT_THAT(core_->Bootstrap(req).status().message(), HasSubstr("at least two"));
  req.admin_names = {"root", "root"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.admin_names = {"root", "ops"};
  req.custodian_names = {"carol", "carol"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.custodian_names = {"Carol"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.custodian_names = {"carol"};
  req.services = {"mtms", "custodian:x"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.services = {"mtms"};
  req.extra_dns_names = {"bad_host"};
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.extra_dns_names = {"ca.example"};
  req.operator_pin = crypto::SecretBytes();
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  policy_.terminal_root_key = KeySpec::kEcP256;
  MakeCore();
  req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes("1"));
  EXPECT_EQ(core_->Bootstrap(req).status().code(), absl::StatusCode::kInvalidArgument);
  policy_.terminal_root_key = KeySpec::kRsa2048;
  policy_.kdh_ca_key = KeySpec::kEcP256;
  MakeCore();
  EXPECT_EQ(core_->Bootstrap(req).status().message(),
            "kdh_ca key: must be RSA (terminals verify the KDH certificate with RSA, TR-34)");
  EXPECT_EQ(repo_.initialize_calls, 0);
}

TEST_F(CaCoreTest, CheckReadyRefusesAnotherMasterKey) {
  Bootstrap();
  repo_.set_kcv("ABCDEF");
  absl::Status s = core_->CheckReady();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("does not match"));
}

TEST_F(CaCoreTest, IssuerKeysDoNotOpenUnderAnotherMasterKey) {
  Bootstrap();
  master_key_.emplace(MasterKey::FromSecret(crypto::RandomSecret(32)).value());
  MakeCore();
  auto key = crypto::GenerateRsaKey(2048).value();
  auto cert = IssueWork(key);
  EXPECT_EQ(cert.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(cert.status().message(), HasSubstr("cannot be opened"));
}

TEST_F(CaCoreTest, WorkCertificateFollowsTheHsmWcrtProfile) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateRsaKey(2048).value();
  auto cert = IssueWork(key);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->SubjectCommonName(), "hsm-work:hsm-mtms:7");
  EXPECT_EQ(cert->IssuerCommonName(), "terminal-root");
  EXPECT_TRUE(cert->HasBasicConstraints());
  EXPECT_TRUE(cert->BasicConstraintsCritical());
  EXPECT_FALSE(cert->IsCa());
  EXPECT_TRUE(cert->KeyUsageCritical());
  EXPECT_EQ(cert->KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment);
  EXPECT_FALSE(cert->HasExtendedKeyUsage());
  EXPECT_TRUE(cert->DnsNames().empty());
  EXPECT_TRUE(*cert->GetPublicKey() == key.GetPublicKey());
  EXPECT_EQ(cert->NotBefore(), kStart - 300);
  EXPECT_EQ(cert->NotAfter(), kStart + 730 * kDay);
  EXPECT_TRUE(crypto::VerifyChain(*cert, {}, {&r.terminal_root, 1}, {}, kStart).ok());
  const CertificateRecord& rec = repo_.certificates().at(cert->SerialHex());
  EXPECT_EQ(rec.profile, Profile::kWork);
  EXPECT_EQ(rec.issuer, IssuerId::kTerminalRoot);
  EXPECT_EQ(rec.subject_cn, "hsm-work:hsm-mtms:7");
  EXPECT_EQ(rec.not_after, cert->NotAfter());
  EXPECT_EQ(rec.certificate_der, cert->ToDer());
}

TEST_F(CaCoreTest, WorkCertificateRequestsAreValidated) {
  Bootstrap();
  auto rsa = crypto::GenerateRsaKey(2048).value();
  auto ec = crypto::GenerateEcP256Key().value();
  auto e3 = testing::RsaKeyWithExponent(2048, 3);
  auto small = testing::RsaKeyWithExponent(1024, 65537);
  struct Case {
    WorkCertificateRequest req;
    std::string message;
  };
  std::vector<Case> cases = {
      {{ec.GetPublicKey().ToDer(), "hsm-mtms", 1, 0}, "public_key_der: must be an RSA key"},
      {{e3.GetPublicKey().ToDer(), "hsm-mtms", 1, 0},
       "public_key_der: RSA public exponent must be 65537"},
      {{small.GetPublicKey().ToDer(), "hsm-mtms", 1, 0},
       "public_key_der: RSA key must have 2048 to 4096 bits, got 1024"},
      {{Bytes{0x30, 0x03, 0x02, 0x01, 0x01}, "hsm-mtms", 1, 0},
       "public_key_der: must be one DER SubjectPublicKeyInfo of an RSA key"},
      {{rsa.GetPublicKey().ToDer(), "HSM", 1, 0}, "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {{rsa.GetPublicKey().ToDer(), "hsm-mtms", 1, 731},
       "validity_days: must be at most 730 for work certificates"},
  };
  size_t before = repo_.certificates().size();
  for (const Case& c : cases) {
    auto cert = core_->IssueWorkCertificate(c.req);
    EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(cert.status().message(), c.message);
  }
  EXPECT_EQ(repo_.certificates().size(), before);
  auto shorter = IssueWork(rsa, 30);
  ASSERT_TRUE(shorter.ok());
  EXPECT_EQ(shorter->NotAfter(), kStart + 30 * kDay);
}

TEST_F(CaCoreTest, KdhCertificateFollowsTheKdhProfile) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateRsaKey(2048).value();
  auto cert = IssueKdh(key);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->SubjectDn(), "CN=kdh:hsm-kms:3,O=rkl");
  EXPECT_EQ(cert->IssuerCommonName(), "kdh-ca");
  EXPECT_TRUE(cert->HasBasicConstraints());
  EXPECT_TRUE(cert->BasicConstraintsCritical());
  EXPECT_FALSE(cert->IsCa());
  EXPECT_TRUE(cert->KeyUsageCritical());
  EXPECT_EQ(cert->KeyUsageBits(), crypto::KeyUsage::kDigitalSignature);
  EXPECT_FALSE(cert->HasExtendedKeyUsage());
  EXPECT_TRUE(cert->DnsNames().empty());
  EXPECT_TRUE(*cert->GetPublicKey() == key.GetPublicKey());
  EXPECT_EQ(cert->NotBefore(), kStart - 300);
  EXPECT_EQ(cert->NotAfter(), kStart + 730 * kDay);
  EXPECT_TRUE(crypto::VerifyChain(*cert, {}, {&r.kdh_ca, 1}, {}, kStart).ok());
  // Each issuer signs one kind of leaf: a KDH certificate is no work certificate.
  EXPECT_FALSE(crypto::VerifyChain(*cert, {}, {&r.terminal_root, 1}, {}, kStart).ok());
  auto work = IssueWork(crypto::GenerateRsaKey(2048).value());
  ASSERT_TRUE(work.ok());
  EXPECT_FALSE(crypto::VerifyChain(*work, {}, {&r.kdh_ca, 1}, {}, kStart).ok());
  const CertificateRecord& rec = repo_.certificates().at(cert->SerialHex());
  EXPECT_EQ(rec.profile, Profile::kKdh);
  EXPECT_EQ(rec.issuer, IssuerId::kKdhCa);
  EXPECT_EQ(rec.subject_cn, "kdh:hsm-kms:3");
  EXPECT_EQ(rec.certificate_der, cert->ToDer());
}

TEST_F(CaCoreTest, KdhCertificateRequestsAreValidated) {
  Bootstrap();
  auto rsa = crypto::GenerateRsaKey(2048).value();
  auto ec = crypto::GenerateEcP256Key().value();
  auto e3 = testing::RsaKeyWithExponent(2048, 3);
  auto small = testing::RsaKeyWithExponent(1024, 65537);
  struct Case {
    KdhCertificateRequest req;
    std::string message;
  };
  std::vector<Case> cases = {
      {{ec.GetPublicKey().ToDer(), "hsm-kms", 1, 0}, "public_key_der: must be an RSA key"},
      {{e3.GetPublicKey().ToDer(), "hsm-kms", 1, 0},
       "public_key_der: RSA public exponent must be 65537"},
      {{small.GetPublicKey().ToDer(), "hsm-kms", 1, 0},
       "public_key_der: RSA key must have 2048 to 4096 bits, got 1024"},
      {{rsa.GetPublicKey().ToDer(), "HSM", 1, 0}, "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {{rsa.GetPublicKey().ToDer(), "hsm:kms", 1, 0},
       "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {{rsa.GetPublicKey().ToDer(), "", 1, 0}, "hsm_id: must be 1-32 characters of [a-z0-9-]"},
      {{rsa.GetPublicKey().ToDer(), "hsm-kms", 1, 731},
       "validity_days: must be at most 730 for kdh certificates"},
  };
  size_t before = repo_.certificates().size();
  for (const Case& c : cases) {
    auto cert = core_->IssueKdhCertificate(c.req);
    EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_EQ(cert.status().message(), c.message);
  }
  EXPECT_EQ(repo_.certificates().size(), before);
  auto shorter = IssueKdh(rsa, 30);
  ASSERT_TRUE(shorter.ok());
  EXPECT_EQ(shorter->NotAfter(), kStart + 30 * kDay);
  // The ceiling is the policy's, not the work certificates'.
  policy_.kdh_validity_days = 100;
  MakeCore();
  EXPECT_EQ(IssueKdh(rsa, 101).status().message(),
            "validity_days: must be at most 100 for kdh certificates");
  EXPECT_EQ(IssueKdh(rsa)->NotAfter(), kStart + 100 * kDay);
}

// The custody rule: a KDH certificate only for the key the named HSM itself states to be its
// live KDH signing key at that index; every refusal records nothing.
TEST_F(CaCoreTest, KdhCertificateOnlyForTheKdhKeyTheHsmHolds) {
  Bootstrap();
  const crypto::PrivateKey kdh = crypto::GenerateRsaKey(2048).value();
  const crypto::PrivateKey mine = crypto::GenerateRsaKey(2048).value();
  const Bytes kdh_der = kdh.GetPublicKey().ToDer();
  const Bytes mine_der = mine.GetPublicKey().ToDer();
  hsm_keys_.Put("hsm-kms", 3, kdh.GetPublicKey());
  hsm_keys_.Put("hsm-kms", 4, kdh.GetPublicKey(), HsmKeyUsage::kTransportDecrypt);
  hsm_keys_.Put("hsm-kms", 5, kdh.GetPublicKey(), HsmKeyUsage::kOther);
  hsm_keys_.Refuse("hsm-kms", 6,
                   absl::PermissionDeniedError("key_index: key 6 has usage TERMINAL_MASTER"));
  hsm_keys_.Refuse("hsm-kms", 7, absl::FailedPreconditionError("key_index: key 7 is SUPERSEDED"));
  hsm_keys_.Put("hsm-kms", 8, CertifiableKey{kdh_der, HsmKeyUsage::kKdhSign, "hsm-other"});
  hsm_keys_.Down("hsm-down");
  struct Case {
    KdhCertificateRequest req;
    absl::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{mine_der, "hsm-kms", 3, 0},
       absl::StatusCode::kPermissionDenied,
       "public_key_der: is not the KDH signing key 3 of HSM hsm-kms"},
      {{kdh_der, "hsm-kms", 4, 0},
       absl::StatusCode::kPermissionDenied,
       "public_key_der: is not the KDH signing key 4 of HSM hsm-kms"},
      {{kdh_der, "hsm-kms", 5, 0},
       absl::StatusCode::kPermissionDenied,
       "public_key_der: is not the KDH signing key 5 of HSM hsm-kms"},
      {{kdh_der, "hsm-kms", 6, 0},
       absl::StatusCode::kPermissionDenied,
       "public_key_der: is not the KDH signing key 6 of HSM hsm-kms"},
      {{kdh_der, "hsm-kms", 7, 0},
       absl::StatusCode::kFailedPrecondition,
       "key_index: HSM hsm-kms will not have key 7 certified: key_index: key 7 is SUPERSEDED"},
      {{kdh_der, "hsm-kms", 8, 0},
       absl::StatusCode::kFailedPrecondition,
       "hsm_id: the endpoint of HSM hsm-kms answers as HSM hsm-other (hsm.endpoints)"},
      {{kdh_der, "hsm-kms", 99, 0},
       absl::StatusCode::kNotFound,
       "key_index: HSM hsm-kms has no key 99"},
      {{kdh_der, "hsm-mtms", 3, 0},
       absl::StatusCode::kFailedPrecondition,
       "hsm_id: the CA has no endpoint for HSM hsm-mtms (hsm.endpoints); it certifies only "
       "keys it can see in their HSM"},
      {{kdh_der, "hsm-down", 3, 0},
       absl::StatusCode::kUnavailable,
       "hsm_id: HSM hsm-down did not answer for key 3: hsm-down unavailable: connect failed"},
  };
  const size_t before = repo_.certificates().size();
  for (const Case& c : cases) {
    auto cert = core_->IssueKdhCertificate(c.req);
    EXPECT_EQ(cert.status().code(), c.code) << c.message;
    EXPECT_EQ(cert.status().message(), c.message);
  }
  EXPECT_EQ(repo_.certificates().size(), before);

  auto cert = core_->IssueKdhCertificate({kdh_der, "hsm-kms", 3, 0});
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->GetPublicKey()->ToDer(), kdh_der);
  EXPECT_EQ(repo_.certificates().size(), before + 1);
}

TEST_F(CaCoreTest, KdhCertificateNeedsAnHsmKeySource) {
  Bootstrap();
  const crypto::PrivateKey kdh = crypto::GenerateRsaKey(2048).value();
  core_.emplace(
      &repo_, &*master_key_, policy_, [this] { return absl::FromUnixSeconds(now_); },
      crypto::FillRandom);
  auto cert = core_->IssueKdhCertificate({kdh.GetPublicKey().ToDer(), "hsm-kms", 3, 0});
  EXPECT_EQ(cert.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cert.status().message(),
            "hsm_id: the CA has no endpoint for HSM hsm-kms (hsm.endpoints); it certifies only "
            "keys it can see in their HSM");
}

// Work certificates are still issued on mtms's word: the HSM is not asked.
TEST_F(CaCoreTest, WorkCertificateDoesNotAskTheHsm) {
  Bootstrap();
  ASSERT_TRUE(IssueWork(crypto::GenerateRsaKey(2048).value()).ok());
  EXPECT_EQ(hsm_keys_.calls(), 0);
}

TEST(HsmEndpointsTest, ParsesIdEqualsTargetItems) {
  auto parsed = ParseHsmEndpoints(" hsm-mtms=127.0.0.1:50052, hsm-kms = hsm-kms:50053 ,");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->size(), 2u);
  EXPECT_EQ(parsed->at("hsm-mtms"), "127.0.0.1:50052");
  EXPECT_EQ(parsed->at("hsm-kms"), "hsm-kms:50053");
  EXPECT_TRUE(ParseHsmEndpoints("")->empty());
  for (const char* bad : {"hsm-kms", "=a:1", "hsm-kms=", "a=x:1,a=y:2"}) {
    EXPECT_EQ(ParseHsmEndpoints(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST_F(CaCoreTest, KdhCertificateNeverOutlivesKdhCa) {
  policy_.kdh_ca_validity_days = 100;
  MakeCore();
  BootstrapResult r = Bootstrap();
  auto cert = IssueKdh(crypto::GenerateRsaKey(2048).value());
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(cert->NotAfter(), r.kdh_ca.NotAfter());
  now_ = r.kdh_ca.NotAfter();
  EXPECT_EQ(IssueKdh(crypto::GenerateRsaKey(2048).value()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CaCoreTest, RevokedKdhCertificateIsListedInKdhCaCrlOnly) {
  BootstrapResult r = Bootstrap();
  auto cert = IssueKdh(crypto::GenerateRsaKey(2048).value());
  ASSERT_TRUE(cert.ok());
  auto revoked = core_->Revoke(cert->SerialHex(), crypto::CrlReason::kKeyCompromise, "admin:alice");
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->issuer, IssuerId::kKdhCa);
  auto crl = core_->GetCrl(IssuerId::kKdhCa);
  ASSERT_TRUE(crl.ok());
  EXPECT_EQ(crl->crl_number, 2u);
  auto parsed = crypto::Crl::FromDer(crl->crl_der);
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->VerifySignature(r.kdh_ca).ok());
  EXPECT_TRUE(parsed->IsRevoked(cert->SerialBytes()));
  EXPECT_EQ(core_->GetCrl(IssuerId::kTerminalRoot)->crl_number, 1u);
}

TEST_F(CaCoreTest, CaWithoutKdhCaGetsItFromAddIssuerOnce) {
  BootstrapResult r = Bootstrap();
  repo_.ForgetIssuer(IssuerId::kKdhCa);  // bootstrapped before kdh-ca existed
  auto key = crypto::GenerateRsaKey(2048).value();
  for (absl::Status s : {IssueKdh(key).status(), core_->GetCrl(IssuerId::kKdhCa).status(),
                         core_->GetIssuerCertificate(IssuerId::kKdhCa).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("kdh-ca: not bootstrapped"));
    EXPECT_THAT(s.message(), HasSubstr("rklctl pki add-issuer kdh-ca"));
  }
  size_t audited = repo_.audit().size();
  auto added = core_->AddIssuer(IssuerId::kKdhCa);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(added->SubjectCommonName(), "kdh-ca");
  EXPECT_TRUE(added->IsSelfSigned());
  EXPECT_EQ(added->PathLength(), 0);
  EXPECT_EQ(added->KeyUsageBits(), crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
  EXPECT_NE(*added, r.kdh_ca);
  EXPECT_EQ(repo_.certificates().at(added->SerialHex()).profile, Profile::kIssuer);
  EXPECT_EQ(core_->GetCrl(IssuerId::kKdhCa)->crl_number, 1u);
  ASSERT_EQ(repo_.audit().size(), audited + 1);
  EXPECT_EQ(repo_.audit().back().subject, "kdh-ca");
  EXPECT_EQ(repo_.audit().back().serial_hex, added->SerialHex());
  auto cert = IssueKdh(key);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_TRUE(crypto::VerifyChain(*cert, {}, {&*added, 1}, {}, kStart).ok());

  // An issuer is never replaced: not kdh-ca again, not one the bootstrap made.
  for (IssuerId id : {IssuerId::kKdhCa, IssuerId::kTerminalRoot}) {
    auto again = core_->AddIssuer(id);
    EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(again.status().message(), HasSubstr("already exists"));
  }
  EXPECT_EQ(*core_->GetIssuerCertificate(IssuerId::kKdhCa), *added);
}

TEST_F(CaCoreTest, AddIssuerNeedsAnInitialisedCaUnderItsMasterKey) {
  auto fresh = core_->AddIssuer(IssuerId::kKdhCa);
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fresh.status().message(), HasSubstr("rklctl pki init"));
  Bootstrap();
  repo_.ForgetIssuer(IssuerId::kKdhCa);
  master_key_.emplace(MasterKey::FromSecret(crypto::RandomSecret(32)).value());
  MakeCore();
  auto other_key = core_->AddIssuer(IssuerId::kKdhCa);
  EXPECT_EQ(other_key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(other_key.status().message(), HasSubstr("does not match"));
  EXPECT_FALSE(repo_.issuers().contains(IssuerId::kKdhCa));
}

TEST_F(CaCoreTest, LeafNeverOutlivesItsIssuer) {
  policy_.terminal_root_validity_days = 100;
  MakeCore();
  BootstrapResult r = Bootstrap();
  auto cert = IssueWork(crypto::GenerateRsaKey(2048).value());
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(cert->NotAfter(), r.terminal_root.NotAfter());
  now_ = r.terminal_root.NotAfter();
  EXPECT_EQ(IssueWork(crypto::GenerateRsaKey(2048).value()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CaCoreTest, SerialsAre128BitPositiveAndCollisionsAreRetried) {
  Bootstrap();
  auto key = crypto::GenerateRsaKey(2048).value();
  Bytes fixed(16, 0xAB);
  scripted_serials_ = {fixed};
  auto first = IssueWork(key);
  ASSERT_TRUE(first.ok());
  // 0xAB with the top bit cleared and the next one set.
  EXPECT_EQ(first->SerialHex(), "6BABABABABABABABABABABABABABABAB");
  EXPECT_EQ(first->SerialBytes().size(), 16u);

  // The same serial again: the insert is refused and a fresh serial is drawn.
  scripted_serials_ = {fixed, Bytes(16, 0x11)};
  auto second = IssueWork(key);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->SerialHex(), "51111111111111111111111111111111");

  // A source that only ever repeats itself ends in an error, not a loop or a duplicate.
  scripted_serials_ = {fixed, fixed, fixed};
  auto third = IssueWork(key);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kInternal);
}

TEST_F(CaCoreTest, OperatorCertificateFollowsItsProfileAndIgnoresTheCsrSubject) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateEcP256Key().value();
  auto cert = core_->IssueOperatorCertificate({CsrPem(key, "admin:mallory"), "alice", 0});
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->SubjectCommonName(), "operator:alice");
  EXPECT_EQ(cert->IssuerCommonName(), "operator-ca");
  EXPECT_EQ(cert->KeyUsageBits(), crypto::KeyUsage::kDigitalSignature);
  EXPECT_TRUE(cert->KeyUsageCritical());
  EXPECT_FALSE(cert->IsCa());
  EXPECT_FALSE(cert->HasExtendedKeyUsage());
  EXPECT_EQ(cert->NotAfter(), kStart + 365 * kDay);
  EXPECT_TRUE(crypto::VerifyChain(*cert, {}, {&r.operator_ca, 1}, {}, kStart).ok());
}

TEST_F(CaCoreTest, OperatorCertificateNeverValidatesAsAWorkCertificate) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateEcP256Key().value();
  auto cert = core_->IssueOperatorCertificate({CsrPem(key), "alice", 0});
  ASSERT_TRUE(cert.ok());
  absl::Status chain = crypto::VerifyChain(*cert, {}, {&r.terminal_root, 1}, {}, kStart);
  EXPECT_EQ(chain.code(), absl::StatusCode::kUnauthenticated) << chain;
  EXPECT_FALSE(crypto::HasAll(cert->KeyUsageBits(), crypto::KeyUsage::kKeyEncipherment));
  EXPECT_NE(cert->GetPublicKey()->Type(), crypto::KeyType::kRsa);
}

TEST_F(CaCoreTest, CsrWhoseSignatureDoesNotMatchItsKeyIsInvalidArgument) {
  Bootstrap();
  auto claimed = crypto::GenerateEcP256Key().value();
  auto signer = crypto::GenerateEcP256Key().value();
  std::string csr = MismatchedCsrPem(signer, claimed);
  size_t before = repo_.certificates().size();
  auto op = core_->IssueOperatorCertificate({csr, "alice", 0});
  EXPECT_EQ(op.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(op.status().message(),
            "csr_pem: signature does not verify under the request's public key");
  auto svc = core_->IssueServiceCertificate({csr, "mtms", {}, 0});
  EXPECT_EQ(svc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->IssueOperatorCertificate({"not a csr", "alice", 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(repo_.certificates().size(), before);
}

TEST_F(CaCoreTest, OperatorKeyMustBeP256) {
  Bootstrap();
  auto rsa = crypto::GenerateRsaKey(2048).value();
  auto cert = core_->IssueOperatorCertificate({CsrPem(rsa), "alice", 0});
  EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cert.status().message(), "csr_pem: operator key must be EC P-256");
  EXPECT_EQ(
      core_->IssueOperatorCertificate({CsrPem(crypto::GenerateEcP256Key().value()), "Alice", 0})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(CaCoreTest, ServiceCertificatesCarryNameLocalhostAndExtraSans) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateEcP256Key().value();
  auto svc =
      core_->IssueServiceCertificate({CsrPem(key), "kms", {"kms.rkl.internal", "localhost"}, 0});
  ASSERT_TRUE(svc.ok()) << svc.status();
  EXPECT_EQ(svc->SubjectCommonName(), "kms");
  EXPECT_THAT(svc->DnsNames(), ElementsAre("kms", "localhost", "kms.rkl.internal"));
  EXPECT_EQ(svc->ExtendedKeyUsages(),
            crypto::ExtendedKeyUsage::kServerAuth | crypto::ExtendedKeyUsage::kClientAuth);
  EXPECT_EQ(svc->KeyUsageBits(), crypto::KeyUsage::kDigitalSignature);
  EXPECT_TRUE(crypto::VerifyChain(*svc, {}, {&r.service_ca, 1}, {}, kStart).ok());

  auto admin = core_->IssueServiceCertificate({CsrPem(key), "admin:bob", {}, 0});
  ASSERT_TRUE(admin.ok());
  EXPECT_THAT(admin->DnsNames(), ElementsAre("admin:bob"));

  EXPECT_EQ(core_->IssueServiceCertificate({CsrPem(key), "admin:bob", {"bob.example"}, 0})
                .status()
                .message(),
            "dns_names: not allowed for admin and custodian certificates");
  EXPECT_EQ(core_->IssueServiceCertificate({CsrPem(key), "pos", {}, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->IssueServiceCertificate({CsrPem(key), "kms", {"Bad_Name"}, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->IssueServiceCertificate({CsrPem(key), "kms", {}, 366}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CaCoreTest, RevocationRepublishesTheIssuersCrl) {
  BootstrapResult r = Bootstrap();
  auto initial = core_->GetCrl(IssuerId::kOperatorCa);
  ASSERT_TRUE(initial.ok());
  EXPECT_EQ(initial->crl_number, 1u);
  auto key = crypto::GenerateEcP256Key().value();
  auto cert = core_->IssueOperatorCertificate({CsrPem(key), "alice", 0});
  ASSERT_TRUE(cert.ok());

  now_ += 60;
  auto revoked = core_->Revoke(cert->SerialHex(), crypto::CrlReason::kKeyCompromise);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->state, CertificateState::kRevoked);
  EXPECT_EQ(revoked->revoked_at, kStart + 60);

  auto crl_record = core_->GetCrl(IssuerId::kOperatorCa);
  ASSERT_TRUE(crl_record.ok());
  EXPECT_EQ(crl_record->crl_number, 2u);
  EXPECT_EQ(crl_record->next_update, kStart + 60 + 7 * kDay);
  auto crl = crypto::Crl::FromDer(crl_record->crl_der).value();
  EXPECT_TRUE(crl.VerifySignature(r.operator_ca).ok());
  EXPECT_TRUE(crl.IsRevoked(*cert));
  EXPECT_EQ(crl.CrlNumber(), 2u);
  ASSERT_EQ(crl.Entries().size(), 1u);
  EXPECT_EQ(crl.Entries()[0].reason, crypto::CrlReason::kKeyCompromise);
  // Chain validation with the CRL now fails as revoked.
  EXPECT_EQ(crypto::VerifyChain(*cert, {}, {&r.operator_ca, 1}, {&crl, 1}, kStart + 120).code(),
            absl::StatusCode::kFailedPrecondition);
  // Other issuers' CRLs are untouched.
  EXPECT_EQ(core_->GetCrl(IssuerId::kServiceCa)->crl_number, 1u);

  auto status = core_->GetCertificateStatus(absl::AsciiStrToLower(cert->SerialHex()));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->state, CertificateState::kRevoked);
  EXPECT_EQ(status->reason, crypto::CrlReason::kKeyCompromise);

  // Revoking again is harmless: same record, no new CRL.
  auto again = core_->Revoke(cert->SerialHex(), crypto::CrlReason::kSuperseded);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->reason, crypto::CrlReason::kKeyCompromise);
  EXPECT_EQ(core_->GetCrl(IssuerId::kOperatorCa)->crl_number, 2u);
}

TEST_F(CaCoreTest, RevocationRules) {
  BootstrapResult r = Bootstrap();
  auto cert =
      core_->IssueOperatorCertificate({CsrPem(crypto::GenerateEcP256Key().value()), "alice", 0});
  ASSERT_TRUE(cert.ok());
  EXPECT_EQ(core_->Revoke(cert->SerialHex(), crypto::CrlReason::kUnspecified).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->Revoke(cert->SerialHex(), crypto::CrlReason::kCertificateHold).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->Revoke("XYZ", crypto::CrlReason::kKeyCompromise).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->Revoke("0102", crypto::CrlReason::kKeyCompromise).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      core_->Revoke(r.terminal_root.SerialHex(), crypto::CrlReason::kKeyCompromise).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->GetCertificateStatus(cert->SerialHex())->state, CertificateState::kGood);
  EXPECT_EQ(core_->GetCertificateStatus("ABCD").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CaCoreTest, CrlIsReSignedOncePastHalfItsLife) {
  Bootstrap();
  auto first = core_->GetCrl(IssuerId::kTerminalRoot).value();
  now_ = kStart + 7 * kDay / 2 - 1;
  EXPECT_EQ(core_->GetCrl(IssuerId::kTerminalRoot)->crl_number, first.crl_number);
  now_ = kStart + 7 * kDay / 2;
  auto refreshed = core_->GetCrl(IssuerId::kTerminalRoot).value();
  EXPECT_EQ(refreshed.crl_number, first.crl_number + 1);
  EXPECT_EQ(refreshed.this_update, now_);
  EXPECT_EQ(refreshed.next_update, now_ + 7 * kDay);
  EXPECT_EQ(crypto::Crl::FromDer(refreshed.crl_der)->NextUpdate(), now_ + 7 * kDay);
  EXPECT_EQ(core_->GetCrl(IssuerId::kTerminalRoot)->crl_number, refreshed.crl_number);
}

TEST_F(CaCoreTest, PolicyValidation) {
  EXPECT_TRUE(ValidatePolicy(CaPolicy{}).ok());
  CaPolicy p;
  p.work_validity_days = 0;
  EXPECT_EQ(ValidatePolicy(p).code(), absl::StatusCode::kInvalidArgument);
  p = CaPolicy{};
  p.crl_validity = absl::Minutes(1);
  EXPECT_EQ(ValidatePolicy(p).code(), absl::StatusCode::kInvalidArgument);
  p = CaPolicy{};
  p.terminal_root_key = KeySpec::kEcP256;
  EXPECT_EQ(ValidatePolicy(p).code(), absl::StatusCode::kInvalidArgument);
  p = CaPolicy{};
  p.kdh_ca_key = KeySpec::kEcP256;
  EXPECT_THAT(ValidatePolicy(p).message(), HasSubstr("kdh_ca key: must be RSA"));
  p = CaPolicy{};
  p.kdh_ca_validity_days = 0;
  EXPECT_EQ(ValidatePolicy(p).message(),
            "kdh_ca validity: must be between 1 and 36500 days, got 0");
  p = CaPolicy{};
  p.kdh_validity_days = 36501;
  EXPECT_EQ(ValidatePolicy(p).message(),
            "kdh certificate validity: must be between 1 and 36500 days, got 36501");
}

// ---- Dual control ---------------------------------------------------------------------------

class DualControlTest : public CaCoreTest {
 protected:
  void SetUp() override {
    CaCoreTest::SetUp();
    boot_.emplace(Bootstrap());
    alice_ = {"admin:alice", boot_->admins[0].certificate.SerialHex()};
    bob_ = {"admin:bob", boot_->admins[1].certificate.SerialHex()};
    carol_ = {"custodian:carol", boot_->custodians[0].certificate.SerialHex()};
    kms_ = {"kms", boot_->services[4].certificate.SerialHex()};
  }

  absl::StatusOr<CertificateRequestRecord> RequestAdmin(const Caller& who,
                                                        const std::string& name) {
    return core_->RequestServiceCertificate(
        who, {CsrPem(crypto::GenerateEcP256Key().value()), name, {}, 0});
  }

  // The last audit record, and that it names the action and a result starting with `result`.
  void ExpectAudited(const std::string& action, const std::string& result) {
    ASSERT_FALSE(repo_.audit().empty());
    const AuditRecord& a = repo_.audit().back();
    EXPECT_EQ(a.action, action);
    EXPECT_TRUE(a.result.starts_with(result)) << a.result;
  }

  std::optional<BootstrapResult> boot_;
  Caller alice_, bob_, carol_, kms_;
};

TEST_F(DualControlTest, OneAdminRequestsASecondApprovesThenItIsSigned) {
  size_t certs = repo_.certificates().size();
  auto request = RequestAdmin(alice_, "admin:mallory");
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->state, RequestState::kPending);
  EXPECT_EQ(request->requested_by, "admin:alice");
  EXPECT_EQ(request->expires_at, kStart + 24 * 3600);
  EXPECT_EQ(repo_.certificates().size(), certs);  // nothing signed yet
  ExpectAudited("request.create", "OK");

  auto approved = core_->ApproveRequest(bob_, request->id, "admin:mallory");
  ASSERT_TRUE(approved.ok()) << approved.status();
  EXPECT_EQ(approved->certificate.SubjectCommonName(), "admin:mallory");
  EXPECT_EQ(approved->request.state, RequestState::kIssued);
  EXPECT_EQ(approved->request.approved_by, "admin:bob");
  EXPECT_EQ(approved->request.serial_hex, approved->certificate.SerialHex());
  EXPECT_TRUE(
      crypto::VerifyChain(approved->certificate, {}, {&boot_->service_ca, 1}, {}, kStart).ok());
  EXPECT_EQ(repo_.certificates().size(), certs + 1);
  ExpectAudited("request.approve", "OK");
  EXPECT_EQ(repo_.audit().back().serial_hex, approved->certificate.SerialHex());

  // Approved once: a second approval (by anyone) is refused.
  auto again = core_->ApproveRequest(bob_, request->id, "admin:mallory");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(repo_.certificates().size(), certs + 1);
}

TEST_F(DualControlTest, TheRequesterCannotApproveTheirOwnRequest) {
  for (const char* name : {"admin:mallory", "kms", "custodian:eve"}) {
    auto request = RequestAdmin(alice_, name);
    ASSERT_TRUE(request.ok()) << request.status();
    size_t certs = repo_.certificates().size();
    auto self = core_->ApproveRequest(alice_, request->id, name);
    EXPECT_EQ(self.status().code(), absl::StatusCode::kPermissionDenied) << name;
    EXPECT_THAT(self.status().message(), HasSubstr("second, distinct admin"));
    EXPECT_EQ(repo_.certificates().size(), certs);
    EXPECT_EQ(repo_.requests().at(request->id).state, RequestState::kPending);
    ExpectAudited("request.approve", "PERMISSION_DENIED");
  }
}

TEST_F(DualControlTest, OperatorCardsNeedTwoAdminsToo) {
  auto request = core_->RequestOperatorCertificate(
      alice_, {CsrPem(crypto::GenerateEcP256Key().value()), "op2", 0});
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->subject, "operator:op2");
  EXPECT_EQ(core_->ApproveRequest(alice_, request->id, "operator:op2").status().code(),
            absl::StatusCode::kPermissionDenied);
  auto approved = core_->ApproveRequest(bob_, request->id, "operator:op2");
  ASSERT_TRUE(approved.ok()) << approved.status();
  EXPECT_EQ(approved->certificate.IssuerCommonName(), "operator-ca");
}

TEST_F(DualControlTest, OnlyAdminsWithAGoodCertificateOfThisCaTakePart) {
  auto request = RequestAdmin(alice_, "admin:mallory");
  ASSERT_TRUE(request.ok());
  size_t certs = repo_.certificates().size();
  // Not an admin: a custodian, a service.
  for (const Caller& who : {carol_, kms_}) {
    EXPECT_EQ(core_->ApproveRequest(who, request->id, "admin:mallory").status().code(),
              absl::StatusCode::kPermissionDenied)
        << who.identity;
    EXPECT_EQ(RequestAdmin(who, "admin:x").status().code(), absl::StatusCode::kPermissionDenied);
  }
  // An admin name on a certificate this CA did not issue, or on another person's.
  EXPECT_EQ(
      core_
          ->ApproveRequest({"admin:bob", "40" + std::string(30, '1')}, request->id, "admin:mallory")
          .status()
          .code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_
                ->ApproveRequest({"admin:bob", alice_.certificate_serial_hex}, request->id,
                                 "admin:mallory")
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(core_->ApproveRequest({"admin:bob", ""}, request->id, "admin:mallory").status().code(),
            absl::StatusCode::kPermissionDenied);
  // A revoked admin.
  ASSERT_TRUE(
      core_->Revoke(bob_.certificate_serial_hex, crypto::CrlReason::kKeyCompromise, "admin:alice")
          .ok());
  auto revoked = core_->ApproveRequest(bob_, request->id, "admin:mallory");
  EXPECT_EQ(revoked.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(revoked.status().message(), HasSubstr("revoked"));
  EXPECT_EQ(repo_.certificates().size(), certs);
  EXPECT_EQ(repo_.requests().at(request->id).state, RequestState::kPending);
  ExpectAudited("request.approve", "PERMISSION_DENIED");
}

TEST_F(DualControlTest, RequestsExpire) {
  auto request = RequestAdmin(alice_, "admin:mallory");
  ASSERT_TRUE(request.ok());
  now_ = kStart + 24 * 3600 - 1;
  EXPECT_FALSE(core_->IsExpired(*request));
  now_ = kStart + 24 * 3600;
  EXPECT_TRUE(core_->IsExpired(*request));
  auto late = core_->ApproveRequest(bob_, request->id, "admin:mallory");
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  EXPECT_EQ(repo_.requests().at(request->id).state, RequestState::kPending);
  ExpectAudited("request.approve", "FAILED_PRECONDITION");
}

TEST_F(DualControlTest, TheApproverMustNameTheSubjectTheyApprove) {
  auto request = RequestAdmin(alice_, "admin:mallory");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(core_->ApproveRequest(bob_, request->id, "kms").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->ApproveRequest(bob_, request->id, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ApproveRequest(bob_, "nope", "admin:mallory").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ApproveRequest(bob_, std::string(32, 'A'), "admin:mallory").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(repo_.requests().at(request->id).state, RequestState::kPending);
}

TEST_F(DualControlTest, EveryRuleOfTheCertificateIsCheckedAtRequestTime) {
  const std::string csr = CsrPem(crypto::GenerateEcP256Key().value());
  for (const ServiceCertificateRequest& bad :
       std::vector<ServiceCertificateRequest>{{csr, "pos", {}, 0},
                                              {csr, "custodian:", {}, 0},
                                              {csr, "admin:bob", {"bob.example"}, 0},
                                              {csr, "custodian:eve", {"eve.example"}, 0},
                                              {csr, "kms", {"Bad_Name"}, 0},
                                              {csr, "kms", {}, 366},
                                              {"garbage", "kms", {}, 0}}) {
    EXPECT_EQ(core_->RequestServiceCertificate(alice_, bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad.name;
    ExpectAudited("request.create", "INVALID_ARGUMENT");
  }
  EXPECT_EQ(core_->RequestOperatorCertificate(alice_, {csr, "Upper", 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(repo_.requests().empty());
}

TEST_F(DualControlTest, RefusalsBeforeTheCoreAreAudited) {
  core_->RecordRefusal("custodian:carol", "ApproveCertificateRequest",
                       absl::PermissionDeniedError("no"));
  ExpectAudited("rpc.refused", "PERMISSION_DENIED");
  EXPECT_EQ(repo_.audit().back().actor, "custodian:carol");
  EXPECT_THAT(repo_.audit().back().detail, HasSubstr("ApproveCertificateRequest"));
}

}  // namespace
}  // namespace rkl::ca
