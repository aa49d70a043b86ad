// Unit tier: the conformance suite over the in-memory repository, plus the pieces that
// need no storage at all (configuration, authorization table, backoff).

#include <fstream>
#include <sstream>

#include "mtms_config.h"
#include "mtms_grpc_service.h"
#include "mtms_metrics.h"
#include "mtms_suite.h"
#include "rkl/metrics/metrics.h"

namespace rkl::mtms::testing {
namespace {

class InMemoryBackend final : public MtmsBackend {
 public:
  // One process, one store: every "replica" shares it.
  MtmsRepository& Replica(int) override { return repository_; }
  void OverwritePackage(const std::string& id, const Bytes& package) override {
    repository_.OverwritePackage(id, package);
  }

 private:
  InMemoryRepository repository_;
};

INSTANTIATE_TEST_SUITE_P(InMemory, MtmsSuite,
                         ::testing::Values(rkl::testing::Implementation<MtmsBackend>{
                             "InMemory", [] { return std::make_unique<InMemoryBackend>(); }}),
                         rkl::testing::ImplementationName());

TEST(MtmsConfigTest, DefaultsAreSaneAndTheDsnIsRequired) {
  ConfigSchema schema = MakeMtmsConfigSchema();
  auto empty = LoadConfigFromYaml(schema, "", [](const std::string&) { return std::nullopt; });
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("db.dsn"));

  auto config = LoadConfigFromYaml(
      schema, "db: {dsn: 'host=db password=hunter2'}\nhsm: {pk_index: 7, mak_index: 8}\n",
      [](const std::string& name) -> std::optional<std::string> {
        if (name == "RKL_MTMS_FORWARDER_INTERVAL") return "250ms";
        return std::nullopt;
      });
  // TLS files are required paths; without them the config is refused, naming them.
  if (!config.ok()) {
    EXPECT_THAT(config.status().message(), HasSubstr("tls.cert_file"));
    EXPECT_THAT(config.status().message(), Not(HasSubstr("hunter2")));
    return;
  }
  ADD_FAILURE() << "a configuration without TLS files must be refused";
}

TEST(MtmsConfigTest, OptionsComeFromTheConfiguration) {
  auto pki_dir = ::testing::TempDir();
  std::string pem = pki_dir + "/mtms-config-test.pem";
  FILE* f = fopen(pem.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", f);
  fclose(f);
  ConfigSchema schema = MakeMtmsConfigSchema();
  auto config = LoadConfigFromYaml(
      schema,
      absl::StrCat("db: {dsn: 'host=db'}\nhsm: {pk_index: 7, mak_index: 8, id: hsm-x}\n",
                   "tls: {cert_file: ", pem, ", key_file: ", pem, ", ca_file: ", pem, "}\n",
                   "forwarder: {interval: 250ms, batch: 3}\nreplica_id: r9\n",
                   "crl: {ca_endpoint: 'ca:50051'}\n", "audit: {mac_key_file: ", pem, "}\n"),
      [](const std::string&) { return std::nullopt; });
  ASSERT_TRUE(config.ok()) << config.status();
  MtmsCoreOptions core = CoreOptionsFromConfig(*config);
  EXPECT_EQ(core.hsm_id, "hsm-x");
  EXPECT_EQ(core.clock_skew, absl::Minutes(5));
  EXPECT_EQ(core.default_rsa_bits, 2048u);
  ForwarderOptions fwd = ForwarderOptionsFromConfig(*config);
  EXPECT_EQ(fwd.pk_index, 7u);
  EXPECT_EQ(fwd.mak_index, 8u);
  EXPECT_EQ(fwd.interval, absl::Milliseconds(250));
  EXPECT_EQ(fwd.batch_size, 3);
  EXPECT_EQ(fwd.replica_id, "r9");
  EXPECT_EQ(config->GetString("listen"), "0.0.0.0:50054");
}

// A PEM file for the tls.* paths, which must exist.
std::string TlsPlaceholder() {
  const std::string pem = ::testing::TempDir() + "/mtms-config-test.pem";
  std::ofstream(pem) << "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
  return pem;
}

absl::StatusOr<Config> LoadWith(const std::string& yaml) {
  const std::string pem = TlsPlaceholder();
  return LoadConfigFromYaml(
      MakeMtmsConfigSchema(),
      absl::StrCat("db: {dsn: 'host=db'}\n", "tls: {cert_file: ", pem, ", key_file: ", pem,
                   ", ca_file: ", pem, "}\n", "crl: {ca_endpoint: 'ca:50051'}\n",
                   "audit: {mac_key_file: ", pem, "}\n", yaml),
      [](const std::string&) { return std::nullopt; });
}

TEST(MtmsConfigTest, ForwarderWorkersDefaultTo16AndArePassedOn) {
  auto defaults = LoadWith("");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(ForwarderOptionsFromConfig(*defaults).workers, 16);
  EXPECT_EQ(ForwarderOptions{}.workers, 16);
  EXPECT_EQ(defaults->GetInt("db.pool_size"), 24);  // 16 workers + room for intake
  EXPECT_TRUE(CheckMtmsConfig(*defaults).ok());

  auto set = LoadWith("forwarder: {workers: 4}\ndb: {pool_size: 8}\n");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(ForwarderOptionsFromConfig(*set).workers, 4);
  EXPECT_TRUE(CheckMtmsConfig(*set).ok());
}

TEST(MtmsConfigTest, ForwarderWorkersMustBeBetween1And256) {
  for (const char* bad : {"0", "-1", "257"}) {
    auto config = LoadWith(absl::StrCat("forwarder: {workers: ", bad, "}\n"));
    ASSERT_FALSE(config.ok()) << bad;
    EXPECT_THAT(config.status().message(), HasSubstr("forwarder.workers")) << bad;
    EXPECT_THAT(config.status().message(), HasSubstr("between 1 and 256")) << bad;
  }
  EXPECT_TRUE(LoadWith("forwarder: {workers: 1}\n").ok());
}

TEST(MtmsConfigTest, PoolMustHoldTheWorkersAndAFewMore) {
  // The old default pool of 8 with the new default of 16 workers is refused, naming both.
  auto small = LoadWith("db: {pool_size: 8}\n");
  ASSERT_TRUE(small.ok()) << small.status();
  absl::Status refused = CheckMtmsConfig(*small);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("db.pool_size"));
  EXPECT_THAT(refused.message(), HasSubstr("forwarder.workers"));
  EXPECT_THAT(refused.message(), HasSubstr("got 8"));
  auto exact = LoadWith(absl::StrCat("db: {pool_size: ", 16 + kPoolReserve, "}\n"));
  ASSERT_TRUE(exact.ok());
  EXPECT_TRUE(CheckMtmsConfig(*exact).ok());
  auto one_short = LoadWith(absl::StrCat("db: {pool_size: ", 16 + kPoolReserve - 1, "}\n"));
  ASSERT_TRUE(one_short.ok());
  EXPECT_FALSE(CheckMtmsConfig(*one_short).ok());
}

TEST(MtmsConfigTest, ExampleConfigurationLoadsAndPassesTheChecks) {
  std::ifstream in(RKL_MTMS_EXAMPLE_CONFIG);
  ASSERT_TRUE(in) << RKL_MTMS_EXAMPLE_CONFIG;
  std::stringstream text;
  text << in.rdbuf();
  // The example's TLS and key paths are a deployment's; point them at a file that exists here.
  const std::string pem = TlsPlaceholder();
  auto config = LoadConfigFromYaml(MakeMtmsConfigSchema(), text.str(),
                                   [&](const std::string& name) -> std::optional<std::string> {
                                     if (name.rfind("RKL_MTMS_TLS_", 0) == 0) return pem;
                                     if (name == "RKL_MTMS_AUDIT_MAC_KEY_FILE") return pem;
                                     return std::nullopt;
                                   });
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(CheckMtmsConfig(*config).ok());
  EXPECT_EQ(ForwarderOptionsFromConfig(*config).workers, 16);
}

TEST(MtmsAuthorizerTest, AdminRpcsNeedAnAdminIdentity) {
  const rpc::ServiceAdapter authz(rpc::ServiceAdapter::DescriptorOf<v1::Mtms>());
  for (const char* rpc : {"GetSubmission", "ProvisionWorkKey", "RetireWorkKey", "ListWorkKeys",
                          "ListQueue", "ForceForward"}) {
    EXPECT_TRUE(authz.Check(rpc, "admin:alice").ok()) << rpc;
    EXPECT_EQ(authz.Check(rpc, "mtms").code(), absl::StatusCode::kPermissionDenied) << rpc;
    EXPECT_EQ(authz.Check(rpc, "").code(), absl::StatusCode::kPermissionDenied) << rpc;
  }
}

// What a Forwarder outside the suite runs against: an in-memory repository and fakes.
struct ForwarderWorld : FakePeers {
  InMemoryRepository repo;
  OperatorTrust trust{ca, clock, absl::Minutes(5)};

  Forwarder MakeForwarder(ForwarderOptions options) {
    return Forwarder(repo, hsm, kms, trust, clock, std::move(options));
  }
};

TEST(ForwarderBackoffTest, DoublesFromTheInitialValueUpToTheCap) {
  ForwarderWorld w;
  Forwarder f =
      w.MakeForwarder({.initial_backoff = absl::Seconds(1), .max_backoff = absl::Seconds(60)});
  EXPECT_EQ(f.BackoffAfter(1), absl::Seconds(1));
  EXPECT_EQ(f.BackoffAfter(2), absl::Seconds(2));
  EXPECT_EQ(f.BackoffAfter(6), absl::Seconds(32));
  EXPECT_EQ(f.BackoffAfter(7), absl::Seconds(60));
  EXPECT_EQ(f.BackoffAfter(1000), absl::Seconds(60));
}

TEST(ForwarderThreadTest, BackgroundWorkerForwardsAndStops) {
  ForwarderWorld w;
  MtmsCore core(w.repo, w.hsm, w.ca, w.trust, w.clock, {});
  ASSERT_TRUE(core.ProvisionWorkKey(false, 0, "admin:t").ok());
  OperatorCard card = w.authority->IssueOperator("op");
  auto work = core.GetWorkCertificate();
  ASSERT_TRUE(work.ok());
  auto receipt = core.SubmitTransportKey(MakeSubmission({}, card, *work, w.clock), "");
  ASSERT_TRUE(receipt.ok());
  Forwarder f = w.MakeForwarder({.pk_index = w.hsm.pk_index(),
                                 .mak_index = w.hsm.mak_index(),
                                 .interval = absl::Milliseconds(10)});
  f.Start();
  // Wait for the state, not for a duration.
  EXPECT_TRUE(rkl::testing::WaitUntil([&] {
    f.Wake();
    return w.repo.GetSubmission(receipt->submission_id).value()->state ==
           SubmissionState::kForwarded;
  }));
  f.Stop();
  EXPECT_EQ(w.kms.calls(), 1);
}

}  // namespace
}  // namespace rkl::mtms::testing

namespace rkl::mtms::testing {
namespace {

// A CA whose operator-ca can be swapped for another one (a re-keyed operator-ca).
class SwitchableCa final : public CaPort {
 public:
  explicit SwitchableCa(TestAuthority* authority) : authority_(authority) {}
  void Use(TestAuthority* authority) { authority_ = authority; }
  absl::StatusOr<IssuedCertificate> IssueWorkCertificate(const Bytes&, const std::string&,
                                                         uint64_t) override {
    return absl::UnimplementedError("not used");
  }
  absl::StatusOr<std::string> GetIssuerCertificate(CaIssuer) override {
    return authority_->operator_ca().ToPem();
  }
  absl::StatusOr<std::string> GetCrl(CaIssuer) override { return authority_->CrlPem(); }

 private:
  TestAuthority* authority_;
};

class OperatorTrustCacheTest : public ::testing::Test {
 protected:
  FakeClock clock_;
  std::unique_ptr<TestAuthority> a_ = TestAuthority::Create(clock_);
  std::unique_ptr<TestAuthority> b_ = TestAuthority::Create(clock_);
  SwitchableCa ca_{a_.get()};
  OperatorTrust trust_{ca_, clock_, absl::Hours(1)};
};

TEST_F(OperatorTrustCacheTest, ACachedChainIsNotReusedUnderAnotherOperatorCa) {
  OperatorCard alice = a_->IssueOperator("alice");
  ASSERT_TRUE(trust_.Refresh().ok());
  auto first = trust_.VerifyForIntake(alice.certificate);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, "alice");
  ASSERT_TRUE(trust_.VerifyForIntake(alice.certificate).ok());  // now from the cache

  ca_.Use(b_.get());  // operator-ca re-keyed: alice's card no longer chains
  ASSERT_TRUE(trust_.Refresh().ok());
  EXPECT_EQ(trust_.VerifyForIntake(alice.certificate).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(trust_.VerifyChainAt(alice.certificate, clock_.NowUnixSeconds()).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(OperatorTrustCacheTest, ACachedChainIsReusedOnlyInsideTheValidityWindow) {
  OperatorCard dave = a_->IssueOperator("dave", absl::Minutes(30));  // now-1h .. now+30m
  ASSERT_TRUE(trust_.Refresh().ok());
  const int64_t now = clock_.NowUnixSeconds();
  ASSERT_TRUE(trust_.VerifyChainAt(dave.certificate, now).ok());
  EXPECT_TRUE(trust_.VerifyChainAt(dave.certificate, dave.certificate.NotAfter()).ok());
  EXPECT_EQ(trust_.VerifyChainAt(dave.certificate, dave.certificate.NotAfter() + 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      trust_.VerifyChainAt(dave.certificate, dave.certificate.NotBefore() - 1).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(trust_.VerifyChainAt(dave.certificate, now).ok());
  clock_.Advance(absl::Minutes(31));  // past notAfter
  EXPECT_EQ(trust_.VerifyForIntake(dave.certificate).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(OperatorTrustCacheTest, ParseReturnsTheSameCertificateAndRefusesGarbage) {
  OperatorCard alice = a_->IssueOperator("alice");
  auto one = trust_.Parse(alice.certificate.ToPem());
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE((*one)->certificate == alice.certificate);
  ASSERT_TRUE((*one)->key.ok());
  EXPECT_TRUE(*(*one)->key == alice.key.GetPublicKey());
  auto again = trust_.Parse(alice.certificate.ToPem());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(one->get(), again->get());
  EXPECT_EQ(trust_.Parse("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(trust_.Parse(alice.certificate.ToPem() + alice.certificate.ToPem()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MtmsMetricsTest, AnEmptyStoreReportsEveryOutboxStateAsZeroAndNoWorkKeyAsZeroDays) {
  InMemoryRepository repository;
  FakeClock clock;
  metrics::Metrics m;
  RegisterMtmsMetrics(m, repository, clock);
  const std::vector<prometheus::MetricFamily> families = m.Collect();
  for (const char* state : {"received", "forwarded", "rejected"}) {
    EXPECT_EQ(metrics::SampleValue(families, "rkl_mtms_outbox", {{"state", state}}), 0) << state;
  }
  EXPECT_EQ(metrics::SampleValue(families, "rkl_mtms_outbox_oldest_unforwarded_age_seconds"), 0);
  EXPECT_EQ(metrics::SampleValue(families, "rkl_mtms_work_key_expiry_days"), 0);
  EXPECT_EQ(metrics::SampleValue(families, "rkl_metrics_refresh_errors_total",
                                 {{"source", "mtms_work_key"}})
                .value_or(0),
            0);
}

TEST(MtmsMetricsTest, AWorkCertificateThatDoesNotParseIsARefreshErrorNotAValue) {
  InMemoryRepository repository;
  FakeClock clock;
  WorkKeyRecord key{.serial_hex = "0A",
                    .hsm_id = "hsm-mtms",
                    .hsm_key_index = 1,
                    .certificate_pem = "not a certificate"};
  ASSERT_TRUE(repository.InstallWorkKey(key, false, AuditEntry{}).ok());
  metrics::Metrics m;
  RegisterMtmsMetrics(m, repository, clock);
  const std::vector<prometheus::MetricFamily> families = m.Collect();
  EXPECT_EQ(metrics::SampleValue(families, "rkl_mtms_work_key_expiry_days"), 0);  // never set
  EXPECT_EQ(metrics::SampleValue(families, "rkl_metrics_refresh_errors_total",
                                 {{"source", "mtms_work_key"}}),
            1);
}

}  // namespace
}  // namespace rkl::mtms::testing
