// rkl_ca_certificates and rkl_ca_crl_next_update_days (ca_metrics.h) over the CA database,
// read at scrapes the test triggers, on a clock the test sets.

#include "ca_metrics.h"
#include "ca_pg_fixture.h"
#include "rkl/crypto/rsa.h"
#include "rkl/metrics/metrics.h"
#include "rkl/testing/fake_clock.h"
#include "test_keys.h"

namespace rkl::ca {
namespace {

class CaMetricsPgTest : public CaPgTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(CaPgTest::SetUp());
    RegisterCaMetrics(metrics_, *repo_, clock_);
  }

  // Every profile × state at one scrape.
  std::map<std::pair<std::string, std::string>, double> Certificates() {
    const std::vector<prometheus::MetricFamily> families = metrics_.Collect();
    std::map<std::pair<std::string, std::string>, double> out;
    for (const char* profile : {"issuer", "work", "operator", "service", "kdh"}) {
      for (const char* state : {"valid", "revoked", "expired"}) {
        std::optional<double> v = metrics::SampleValue(families, "rkl_ca_certificates",
                                                       {{"profile", profile}, {"state", state}});
        EXPECT_TRUE(v.has_value()) << profile << " " << state;
        out[{profile, state}] = v.value_or(-1);
      }
    }
    return out;
  }

  std::optional<double> CrlDays(const std::string& issuer) {
    return metrics::SampleValue(metrics_.Collect(), "rkl_ca_crl_next_update_days",
                                {{"issuer", issuer}});
  }

  void SetClockSeconds(int64_t unix_seconds) { clock_.Set(unix_seconds * 1000); }

  metrics::Metrics metrics_;
  rkl::testing::FakeClock clock_{absl::Now()};
};

TEST_F(CaMetricsPgTest, EveryProfileAndStateIsZeroBeforeTheBootstrapAndThereIsNoCrl) {
  for (const auto& [series, value] : Certificates()) {
    EXPECT_EQ(value, 0) << series.first << " " << series.second;
  }
  EXPECT_EQ(CrlDays("terminal-root"), std::nullopt);
}

TEST_F(CaMetricsPgTest, CertificatesFollowIssuanceRevocationAndTheClock) {
  Bootstrap();
  const auto before = Certificates();
  EXPECT_GE(before.at({"issuer", "valid"}), 4);  // the four issuers sign themselves
  EXPECT_EQ(before.at({"operator", "revoked"}), 0);

  auto alice_key = crypto::GenerateEcP256Key().value();
  auto alice = core_->IssueOperatorCertificate({testing::CsrPem(alice_key), "alice", 0});
  ASSERT_TRUE(alice.ok()) << alice.status();
  auto bob_key = crypto::GenerateEcP256Key().value();
  auto bob = core_->IssueOperatorCertificate({testing::CsrPem(bob_key), "bob", 0});
  ASSERT_TRUE(bob.ok()) << bob.status();
  auto work = core_->IssueWorkCertificate(
      {crypto::GenerateRsaKey(2048)->GetPublicKey().ToDer(), "hsm-mtms", 1, 0});
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_TRUE(core_->Revoke(bob->SerialHex(), crypto::CrlReason::kAffiliationChanged).ok());

  auto after = Certificates();
  EXPECT_EQ(after.at({"operator", "valid"}), before.at({"operator", "valid"}) + 1);
  EXPECT_EQ(after.at({"operator", "revoked"}), 1);
  EXPECT_EQ(after.at({"work", "valid"}), before.at({"work", "valid"}) + 1);
  EXPECT_EQ(after.at({"issuer", "valid"}), before.at({"issuer", "valid"}));
  for (const char* profile : {"issuer", "work", "operator", "service", "kdh"}) {
    EXPECT_EQ(after.at({profile, "expired"}), 0) << profile;
  }

  // Alice's certificate is valid through its notAfter, expired the second after (with any
  // other operator certificate that ends in the same second: the bootstrap's card may).
  const int64_t alice_not_after = alice->NotAfter();
  SetClockSeconds(alice_not_after);
  const auto at_end = Certificates();
  EXPECT_GE(at_end.at({"operator", "valid"}), 1);
  SetClockSeconds(alice_not_after + 1);
  auto expired = Certificates();
  EXPECT_LE(expired.at({"operator", "valid"}), at_end.at({"operator", "valid"}) - 1);
  EXPECT_GE(expired.at({"operator", "expired"}), at_end.at({"operator", "expired"}) + 1);
  EXPECT_EQ(expired.at({"operator", "valid"}) + expired.at({"operator", "expired"}),
            at_end.at({"operator", "valid"}) + at_end.at({"operator", "expired"}));
  EXPECT_EQ(expired.at({"operator", "revoked"}), 1);  // revoked stays revoked

  // Long after everything expired: every certificate not revoked is expired.
  SetClockSeconds(alice_not_after + 100LL * 365 * 86400);
  auto later = Certificates();
  for (const char* profile : {"issuer", "work", "operator", "service", "kdh"}) {
    EXPECT_EQ(later.at({profile, "valid"}), 0) << profile;
    EXPECT_EQ(later.at({profile, "expired"}),
              after.at({profile, "valid"}) + after.at({profile, "expired"}))
        << profile;
    EXPECT_EQ(later.at({profile, "revoked"}), after.at({profile, "revoked"})) << profile;
  }
}

TEST_F(CaMetricsPgTest, CrlNextUpdateDaysFollowTheClockPerIssuer) {
  Bootstrap();
  const std::pair<IssuerId, const char*> kIssuers[] = {{IssuerId::kTerminalRoot, "terminal-root"},
                                                       {IssuerId::kOperatorCa, "operator-ca"},
                                                       {IssuerId::kServiceCa, "service-ca"},
                                                       {IssuerId::kKdhCa, "kdh-ca"}};
  const int64_t operator_next = repo_->GetCrl(IssuerId::kOperatorCa)->next_update;
  // Two and a half days before the operator-ca CRL's nextUpdate.
  clock_.Set(operator_next * 1000 - 2 * 86400 * 1000 - 12 * 3600 * 1000);
  EXPECT_EQ(CrlDays("operator-ca"), 2.5);
  for (const auto& [issuer, name] : kIssuers) {
    const int64_t next = repo_->GetCrl(issuer)->next_update;
    EXPECT_EQ(CrlDays(name), static_cast<double>(next * 1000 - clock_.NowUnixMs()) / 86400000.0)
        << name;
  }
  // Past nextUpdate: negative.
  SetClockSeconds(operator_next + 86400);
  EXPECT_EQ(CrlDays("operator-ca"), -1);
  // A new CRL (a revocation republishes it) moves the issuer's nextUpdate on.
  SetClockSeconds(operator_next - 86400);
  EXPECT_EQ(CrlDays("operator-ca"), 1);
  auto key = crypto::GenerateEcP256Key().value();
  auto cert = core_->IssueOperatorCertificate({testing::CsrPem(key), "carol", 0});
  ASSERT_TRUE(cert.ok()) << cert.status();
  ASSERT_TRUE(core_->Revoke(cert->SerialHex(), crypto::CrlReason::kSuperseded).ok());
  const int64_t republished = repo_->GetCrl(IssuerId::kOperatorCa)->next_update;
  ASSERT_GE(republished, operator_next);
  EXPECT_EQ(CrlDays("operator-ca"),
            static_cast<double>(republished * 1000 - clock_.NowUnixMs()) / 86400000.0);
  // The series name issuers, never a serial or subject.
  const std::string text = metrics_.Render();
  EXPECT_EQ(text.find(cert->SerialHex()), std::string::npos);
  EXPECT_EQ(text.find("carol"), std::string::npos);
}

TEST_F(CaMetricsPgTest, ADatabaseFailureKeepsTheLastValuesAndCountsARefreshError) {
  Bootstrap();
  const double issuers = Certificates().at({"issuer", "valid"});
  Sql("ALTER TABLE ca_certificates RENAME TO ca_certificates_away");
  const std::vector<prometheus::MetricFamily> families = metrics_.Collect();
  EXPECT_EQ(metrics::SampleValue(families, "rkl_ca_certificates",
                                 {{"profile", "issuer"}, {"state", "valid"}}),
            issuers);
  EXPECT_EQ(metrics::SampleValue(families, "rkl_metrics_refresh_errors_total",
                                 {{"source", "ca_certificates"}}),
            1);
}

}  // namespace
}  // namespace rkl::ca
