// PgCaRepository and CaCore against a real PostgreSQL database.

#include <latch>
#include <thread>

#include "ca_pg_fixture.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_verify.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

using ::testing::HasSubstr;

class CaRepositoryPgTest : public CaPgTest {};

TEST_F(CaRepositoryPgTest, BootstrapIsRecordedAndSurvivesANewProcess) {
  BootstrapResult r = Bootstrap();
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_issuers")[0][0].as<int>(), 4);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>(), 12);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_crls WHERE crl_number = 1")[0][0].as<int>(), 4);
  EXPECT_EQ(Sql("SELECT key_type FROM ca_issuers WHERE name = 'kdh-ca'")[0][0].as<std::string>(),
            "rsa-2048");  // the fixture's policy
  EXPECT_EQ(Sql("SELECT kcv FROM ca_master_key")[0][0].as<std::string>(), master_key_->KcvHex());
  EXPECT_EQ(Sql("SELECT profile FROM ca_certificates WHERE subject_cn = 'terminal-root'")[0][0]
                .as<std::string>(),
            "issuer");

  // A fresh pool and core, as a restarted daemon would have.
  db::ConnectionPool pool2({.dsn = database().dsn(), .max_size = 2});
  PgCaRepository repo2(&pool2);
  CaCore core2(
      &repo2, &*master_key_, policy_, [] { return absl::Now(); }, crypto::FillRandom);
  EXPECT_TRUE(core2.CheckReady().ok());
  EXPECT_EQ(*core2.GetIssuerCertificate(IssuerId::kTerminalRoot), r.terminal_root);
  auto work = core2.IssueWorkCertificate(
      {crypto::GenerateRsaKey(2048)->GetPublicKey().ToDer(), "hsm-mtms", 3, 0});
  ASSERT_TRUE(work.ok()) << work.status();

  // The same database under another master key is refused at start-up.
  auto other = MasterKey::FromSecret(crypto::RandomSecret(32)).value();
  CaCore core3(
      &repo2, &other, policy_, [] { return absl::Now(); }, crypto::FillRandom);
  EXPECT_EQ(core3.CheckReady().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CaRepositoryPgTest, SecondInitialisationIsRefusedAtomically) {
  Bootstrap();
  BootstrapRequest req;
  req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes("1"));
  auto again = core_->Bootstrap(req);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  // Even a caller that skips the core's check cannot re-initialise: the repository refuses.
  absl::Status direct = repo_->Initialize("ABCDEF", {}, {}, {});
  EXPECT_EQ(direct.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sql("SELECT kcv FROM ca_master_key")[0][0].as<std::string>(), master_key_->KcvHex());
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates")[0][0].as<int>(), 12);
}

// A CA bootstrapped before kdh-ca existed (its rows removed here, as the superuser) gets it
// from AddIssuer (`rklctl pki add-issuer kdh-ca`), once, as the runtime role.
TEST_F(CaRepositoryPgTest, AddIssuerGivesAnOlderCaItsKdhCaOnce) {
  BootstrapResult r = Bootstrap();
  Sql("DELETE FROM ca_crls WHERE issuer = 'kdh-ca'");
  Sql("DELETE FROM ca_certificates WHERE issuer = 'kdh-ca'");
  Sql("DELETE FROM ca_issuers WHERE name = 'kdh-ca'");
  auto rsa = crypto::GenerateRsaKey(2048)->GetPublicKey().ToDer();
  hsm_keys_.Put("hsm-kms", 1, CertifiableKey{rsa, HsmKeyUsage::kKdhSign, "hsm-kms"});
  auto before = core_->IssueKdhCertificate({rsa, "hsm-kms", 1, 0});
  EXPECT_EQ(before.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(before.status().message(), HasSubstr("kdh-ca: not bootstrapped"));

  auto added = core_->AddIssuer(IssuerId::kKdhCa);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_issuers")[0][0].as<int>(), 4);
  EXPECT_EQ(Sql("SELECT crl_number FROM ca_crls WHERE issuer = 'kdh-ca'")[0][0].as<int>(), 1);
  EXPECT_EQ(Sql("SELECT profile FROM ca_certificates WHERE serial_hex = '" + added->SerialHex() +
                "'")[0][0]
                .as<std::string>(),
            "issuer");
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_audit WHERE action = 'bootstrap.issue' AND subject = "
                "'kdh-ca' AND serial_hex = '" +
                added->SerialHex() + "'")[0][0]
                .as<int>(),
            1);
  auto kdh = core_->IssueKdhCertificate({rsa, "hsm-kms", 1, 0});
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  EXPECT_TRUE(
      crypto::VerifyChain(*kdh, {}, {&*added, 1}, {}, absl::ToUnixSeconds(absl::Now())).ok());
  EXPECT_EQ(core_->GetCrl(IssuerId::kKdhCa)->crl_number, 1u);

  // Never replaced: not through the core, not through the repository directly.
  EXPECT_EQ(core_->AddIssuer(IssuerId::kKdhCa).status().code(),
            absl::StatusCode::kFailedPrecondition);
  IssuerRecord issuer = repo_->GetIssuer(IssuerId::kKdhCa).value();
  CertificateRecord cert = RecordOf(r.kdh_ca, IssuerId::kKdhCa, Profile::kIssuer);
  CrlRecord crl = repo_->GetCrl(IssuerId::kKdhCa).value();
  absl::Status direct = repo_->AddIssuer(issuer, cert, crl);
  EXPECT_EQ(direct.code(), absl::StatusCode::kFailedPrecondition) << direct;
  EXPECT_EQ(*core_->GetIssuerCertificate(IssuerId::kKdhCa), *added);
}

TEST_F(CaRepositoryPgTest, SchemaKnowsKdhCaAndStillRefusesUnknownIssuersAndProfiles) {
  Bootstrap();
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE issuer = 'kdh-ca' AND profile = "
                "'issuer'")[0][0]
                .as<int>(),
            1);
  EXPECT_THROW(Sql("INSERT INTO ca_issuers (name, certificate_der, sealed_private_key, key_type) "
                   "SELECT 'other-ca', certificate_der, sealed_private_key, key_type FROM "
                   "ca_issuers WHERE name = 'kdh-ca'"),
               pqxx::check_violation);
  EXPECT_THROW(Sql("UPDATE ca_certificates SET profile = 'krd' WHERE issuer = 'kdh-ca'"),
               pqxx::check_violation);
}

TEST_F(CaRepositoryPgTest, AddIssuerNeedsAnInitialisedCa) {
  auto added = core_->AddIssuer(IssuerId::kKdhCa);
  EXPECT_EQ(added.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_issuers")[0][0].as<int>(), 0);
}

TEST_F(CaRepositoryPgTest, SerialNumbersAreUniqueByConstraint) {
  Bootstrap();
  auto cert = core_->IssueWorkCertificate(
      {crypto::GenerateRsaKey(2048)->GetPublicKey().ToDer(), "hsm-mtms", 1, 0});
  ASSERT_TRUE(cert.ok());
  CertificateRecord dup = RecordOf(*cert, IssuerId::kTerminalRoot, Profile::kWork);
  dup.subject_cn = "hsm-work:other:2";
  absl::Status s = repo_->InsertCertificate(dup);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr("ca_certificates_pkey"));
  EXPECT_EQ(Sql("SELECT count(*) FROM ca_certificates WHERE serial_hex = '" + cert->SerialHex() +
                "'")[0][0]
                .as<int>(),
            1);
  auto stored = repo_->GetCertificate(cert->SerialHex());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->subject_cn, "hsm-work:hsm-mtms:1");
  EXPECT_EQ(stored->certificate_der, cert->ToDer());
  EXPECT_EQ(stored->profile, Profile::kWork);
}

TEST_F(CaRepositoryPgTest, RevocationUpdatesStatusAndCrlInOneTransaction) {
  BootstrapResult r = Bootstrap();
  auto key = crypto::GenerateEcP256Key().value();
  auto cert = core_->IssueOperatorCertificate({testing::CsrPem(key), "alice", 0});
  ASSERT_TRUE(cert.ok());
  auto revoked = core_->Revoke(cert->SerialHex(), crypto::CrlReason::kAffiliationChanged);
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  auto row = Sql("SELECT state, revocation_reason FROM ca_certificates WHERE serial_hex = '" +
                 cert->SerialHex() + "'");
  EXPECT_EQ(row[0][0].as<std::string>(), "revoked");
  EXPECT_EQ(row[0][1].as<int>(), 3);
  auto crl_record = repo_->GetCrl(IssuerId::kOperatorCa);
  ASSERT_TRUE(crl_record.ok());
  EXPECT_EQ(crl_record->crl_number, 2u);
  auto crl = crypto::Crl::FromDer(crl_record->crl_der).value();
  EXPECT_TRUE(crl.IsRevoked(*cert));
  EXPECT_TRUE(crl.VerifySignature(r.operator_ca).ok());

  // A CRL publisher that fails rolls the revocation back.
  auto key2 = crypto::GenerateEcP256Key().value();
  auto cert2 = core_->IssueOperatorCertificate({testing::CsrPem(key2), "bob", 0});
  ASSERT_TRUE(cert2.ok());
  auto failed = repo_->Revoke(
      cert2->SerialHex(), 1, crypto::CrlReason::kSuperseded,
      [](const CrlRecord&,
         const std::vector<RevokedEntry>&) -> absl::StatusOr<std::optional<CrlRecord>> {
        return absl::InternalError("signing failed");
      });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(repo_->GetCertificate(cert2->SerialHex())->state, CertificateState::kGood);
  EXPECT_EQ(repo_->GetCrl(IssuerId::kOperatorCa)->crl_number, 2u);
}

TEST_F(CaRepositoryPgTest, ConcurrentRevocationsEachGetANewerCrlListingAllBefore) {
  Bootstrap();
  constexpr int kThreads = 2;
  constexpr int kPerThread = 4;
  std::vector<std::string> serials;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    auto cert = core_->IssueOperatorCertificate(
        {testing::CsrPem(crypto::GenerateEcP256Key().value()), "op" + std::to_string(i), 0});
    ASSERT_TRUE(cert.ok());
    serials.push_back(cert->SerialHex());
  }
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        if (!core_->Revoke(serials[t * kPerThread + i], crypto::CrlReason::kSuperseded).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto crl_record = repo_->GetCrl(IssuerId::kOperatorCa).value();
  EXPECT_EQ(crl_record.crl_number, 1u + kThreads * kPerThread);
  auto crl = crypto::Crl::FromDer(crl_record.crl_der).value();
  EXPECT_EQ(crl.Entries().size(), serials.size());
  for (const std::string& s : serials) EXPECT_TRUE(crl.IsRevoked(*FromHex(s))) << s;
}

TEST_F(CaRepositoryPgTest, StaleCrlIsReSignedAndStored) {
  Bootstrap();
  int64_t shift = 4 * 86'400;  // past half of the default 7 days
  CaCore later(
      &*repo_, &*master_key_, policy_, [shift] { return absl::Now() + absl::Seconds(shift); },
      crypto::FillRandom);
  auto refreshed = later.GetCrl(IssuerId::kServiceCa);
  ASSERT_TRUE(refreshed.ok()) << refreshed.status();
  EXPECT_EQ(refreshed->crl_number, 2u);
  EXPECT_EQ(repo_->GetCrl(IssuerId::kServiceCa)->crl_number, 2u);
  EXPECT_EQ(core_->GetCrl(IssuerId::kServiceCa)->crl_number, 2u);
}

}  // namespace
}  // namespace rkl::ca
