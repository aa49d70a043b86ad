// rkl-kms over real gRPC with mTLS (TestPki) and real PostgreSQL, with the fake HSM #2:
// authorization per identity, the terminal flow as an anonymous TLS client, two replicas
// sharing one database, and 1,000 terminals receiving 1,000 distinct TMKs.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <latch>
#include <map>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "fake_hsm.h"
#include "kms_core.h"
#include "kms_db_roles.h"
#include "kms_grpc_service.h"
#include "kms_metrics.h"
#include "kms_pg_metrics.h"
#include "kms_pg_repository.h"
#include "rkl/common/request_id.h"
#include "rkl/common/retry_delay.h"
#include "rkl/kms/migrations.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/race.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/test_pki.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "test_terminal.h"
#include "tr34_fixtures.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::Duration kTimeout = absl::Seconds(20);
// The replicas' clock stands still: no session expires while a loaded machine runs a test.
// (Expiry itself is the core suite's, on a clock it advances.)
const absl::Time kNow = absl::FromUnixMillis(1'700'000'000'000);

// One KMS process: its own metrics, pool, core, service and server on 127.0.0.1:0.
struct Replica {
  Replica(
      const std::string& dsn, HsmPort& hsm, const rpc::TlsFiles& tls,
      TerminalRateLimits limits = {}, Clock clock = [] { return kNow; }, CaPort* ca = nullptr,
      std::vector<crypto::Certificate> krd_cas = {})
      : pool(db::PoolOptions{.dsn = dsn, .max_size = 8}),
        repository(pool, crypto::SecretBytes(32)),  // both replicas: one key
        core(repository, hsm, clock, crypto::FillRandom,
             KmsCoreOptions{.pk_index = FakeHsm::kPkIndex,
                            .mak_index = FakeHsm::kMakIndex,
                            .krd_cas = std::move(krd_cas),
                            .metrics = KmsMetrics::Register(metrics)},
             ca),
        service(core, repository.audit_log(), std::move(limits)) {
    RegisterKmsStateMetrics(metrics, pool, clock);
    rpc::ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.tls = tls;
    options.client_cert_mode = rpc::ClientCertMode::kOptionalVerified;
    auto started = rpc::Server::Start(options, {&service});
    EXPECT_TRUE(started.ok()) << started.status();
    if (started.ok()) server = *std::move(started);
  }
  std::string target() const { return "127.0.0.1:" + std::to_string(server->port()); }
  // One scrape: the value of `name` with exactly `labels` (-1 when there is no such series).
  double Metric(std::string_view name, const std::map<std::string, std::string>& labels = {}) {
    return metrics::SampleValue(metrics.Collect(), name, labels).value_or(-1);
  }

  metrics::Metrics metrics;  // first: the core counts in it
  db::ConnectionPool pool;
  PgKmsRepository repository;
  KmsCore core;
  KmsGrpcService service;
  std::unique_ptr<rpc::Server> server;
};

class KmsGrpcTest : public rkl::testing::PgFixture {
 protected:
  KmsGrpcTest() : PgFixture({.migrations = Migrations(), .grants = kKmsRuntimeGrants}) {}

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    for (const char* id : {"kms", "mtms", "admin:alice", "hsm-kms"}) {
      auto files = pki_->Issue(id);
      ASSERT_TRUE(files.ok()) << files.status();
      tls_[id] = *files;
    }
    hsm_ = std::make_unique<FakeHsm>(keys_);
    a_ = std::make_unique<Replica>(database().runtime_dsn(), *hsm_, tls_["kms"]);
    b_ = std::make_unique<Replica>(database().runtime_dsn(), *hsm_, tls_["kms"]);
    ASSERT_NE(a_->server, nullptr);
    ASSERT_NE(b_->server, nullptr);
  }

  std::unique_ptr<rkl::v1::Kms::Stub> Stub(const Replica& r, const rpc::TlsFiles& tls) {
    rpc::ChannelOptions options;
    options.tls = tls;
    options.authority = "kms";
    auto channel = rpc::MakeChannel(r.target(), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return rkl::v1::Kms::NewStub(std::shared_ptr<grpc::ChannelInterface>(*channel));
  }
  std::unique_ptr<rkl::v1::Kms::Stub> Terminal(const Replica& r) {
    return Stub(r, pki_->Anonymous());
  }

  template <typename Req, typename Resp, typename Method>
  absl::Status Call(rkl::v1::Kms::Stub& stub, Method method, const Req& req, Resp* resp) {
    auto ctx = rpc::MakeClientContext(kTimeout);
    return rpc::FromGrpcStatus((stub.*method)(ctx.get(), req, resp));
  }

  absl::StatusOr<rkl::v1::KmsSubmitTransportKeyResponse> Submit(rkl::v1::Kms::Stub& stub,
                                                                const TestTerminal& t) {
    rkl::v1::KmsSubmitTransportKeyRequest req;
    req.set_sn(t.sn());
    auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    if (!ctk.ok()) return ctk.status();
    req.set_ctk_pk(std::string(AsString(*ctk)));
    req.set_mtms_submission_id("sub-" + t.sn());
    rkl::v1::KmsSubmitTransportKeyResponse resp;
    absl::Status s = Call(stub, &rkl::v1::Kms::Stub::SubmitTransportKey, req, &resp);
    if (!s.ok()) return s;
    return resp;
  }

  absl::StatusOr<rkl::v1::BeginAuthenticationResponse> Begin(rkl::v1::Kms::Stub& stub,
                                                             TestTerminal& t) {
    rkl::v1::BeginAuthenticationRequest req;
    req.set_sn(t.sn());
    req.set_rnd1(std::string(AsString(t.NewRnd1())));
    rkl::v1::BeginAuthenticationResponse resp;
    absl::Status s = Call(stub, &rkl::v1::Kms::Stub::BeginAuthentication, req, &resp);
    if (!s.ok()) return s;
    return resp;
  }

  absl::StatusOr<rkl::v1::CompleteAuthenticationResponse> Complete(rkl::v1::Kms::Stub& stub,
                                                                   const TestTerminal& t,
                                                                   const std::string& session,
                                                                   const Bytes& crnd2) {
    rkl::v1::CompleteAuthenticationRequest req;
    req.set_session_id(session);
    req.set_sn(t.sn());
    req.set_crnd2(std::string(AsString(crnd2)));
    rkl::v1::CompleteAuthenticationResponse resp;
    absl::Status s = Call(stub, &rkl::v1::Kms::Stub::CompleteAuthentication, req, &resp);
    if (!s.ok()) return s;
    return resp;
  }

  absl::Status Confirm(rkl::v1::Kms::Stub& stub, const TestTerminal& t,
                       const std::string& session) {
    auto proof = t.InstallProof();
    if (!proof.ok()) return proof.status();
    rkl::v1::ConfirmInstallationRequest req;
    req.set_session_id(session);
    req.set_sn(t.sn());
    req.set_proof(std::string(AsString(*proof)));
    rkl::v1::ConfirmInstallationResponse resp;
    absl::Status s = Call(stub, &rkl::v1::Kms::Stub::ConfirmInstallation, req, &resp);
    if (s.ok() && resp.state() != rkl::v1::TERMINAL_STATE_INSTALLED) {
      return absl::InternalError("confirmation did not install");
    }
    return s;
  }

  // The whole terminal side: begin on `first`, complete and confirm on `second`.
  absl::Status RunTerminal(TestTerminal& t, rkl::v1::Kms::Stub& first, rkl::v1::Kms::Stub& second) {
    auto begun = Begin(first, t);
    if (!begun.ok()) return begun.status();
    auto crnd2 = t.AnswerChallenge(AsBytes(begun->crnd1()), AsBytes(begun->rnd2()));
    if (!crnd2.ok()) return crnd2.status();
    auto delivered = Complete(second, t, begun->session_id(), *crnd2);
    if (!delivered.ok()) return delivered.status();
    absl::Status accepted = t.AcceptKeyBlock(delivered->key_block(), delivered->tmk_kcv());
    if (!accepted.ok()) return accepted;
    return Confirm(second, t, begun->session_id());
  }

  absl::StatusOr<rkl::v1::Terminal> AdminGet(const std::string& sn) {
    auto admin = Stub(*a_, tls_["admin:alice"]);
    rkl::v1::GetTerminalRequest req;
    req.set_sn(sn);
    rkl::v1::Terminal resp;
    absl::Status s = Call(*admin, &rkl::v1::Kms::Stub::GetTerminal, req, &resp);
    if (!s.ok()) return s;
    return resp;
  }

  // Rows of every KMS table, by name (audit_pending: records not yet sealed into audit).
  std::map<std::string, int64_t> TableRows() {
    std::map<std::string, int64_t> rows;
    for (const char* table : {"terminals", "sn_tk_kms", "auth_sessions", "refusal_counts", "audit",
                              "audit_pending", "audit_key", "audit_legacy"}) {
      rows[table] = Sql(absl::StrCat("SELECT count(*) FROM ", table))[0][0].as<int64_t>();
    }
    return rows;
  }

  // Rows of every KMS table, in one string ("terminals=.. sn_tk_kms=.. ...").
  std::string RowCounts() {
    pqxx::result r =
        Sql("SELECT (SELECT count(*) FROM terminals), (SELECT count(*) FROM sn_tk_kms), "
            "(SELECT count(*) FROM auth_sessions), (SELECT count(*) FROM audit)");
    return absl::StrCat("terminals=", r[0][0].as<int64_t>(), " sn_tk_kms=", r[0][1].as<int64_t>(),
                        " auth_sessions=", r[0][2].as<int64_t>(), " audit=", r[0][3].as<int64_t>());
  }

  TransportKeys keys_ = TransportKeys::Generate();
  std::unique_ptr<rkl::testing::TestPki> pki_;
  std::map<std::string, rpc::TlsFiles> tls_;
  std::unique_ptr<FakeHsm> hsm_;
  std::unique_ptr<Replica> a_;
  std::unique_ptr<Replica> b_;
};

TEST_F(KmsGrpcTest, TerminalCompletesTheFlowOverTlsAndNothingSecretIsLogged) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  spdlog::default_logger()->sinks().push_back(sink);
  spdlog::set_level(spdlog::level::trace);

  auto mtms = Stub(*a_, tls_["mtms"]);
  auto terminal = Terminal(*a_);
  TestTerminal t("POS-GRPC-1", KeyAlgorithm::kAes128);
  auto submitted = Submit(*mtms, t);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  EXPECT_EQ(submitted->state(), rkl::v1::TERMINAL_STATE_TK_RECEIVED);
  auto again = Submit(*mtms, t);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate());
  ASSERT_TRUE(RunTerminal(t, *terminal, *terminal).ok());

  auto info = AdminGet(t.sn());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), rkl::v1::TERMINAL_STATE_INSTALLED);
  EXPECT_EQ(info->tmk_kcv(), t.tmk_kcv());
  EXPECT_EQ(info->algorithm(), rkl::v1::KEY_ALGORITHM_AES128);
  EXPECT_EQ(info->tmk_generation(), 1u);
  EXPECT_GT(info->installed_at_unix_ms(), 0);

  spdlog::default_logger()->sinks().pop_back();
  spdlog::set_level(spdlog::level::info);
  ASSERT_THAT(log.str(), HasSubstr("POS-GRPC-1"));  // the capture did capture
  for (const std::string& secret : t.SecretHexForLeakChecks()) {
    EXPECT_THAT(log.str(), Not(HasSubstr(secret)));
  }
  // Nor anything in the database: only indexes, KCVs and wrapped Ctk_pk.
  for (const auto& row :
       Sql("SELECT detail FROM audit UNION ALL SELECT detail FROM audit_pending")) {
    for (const std::string& secret : t.SecretHexForLeakChecks()) {
      EXPECT_THAT(row[0].as<std::string>(), Not(HasSubstr(secret)));
    }
  }
}

// Issue 21, finding 1: over budget, a terminal RPC is RESOURCE_EXHAUSTED with
// google.rpc.RetryInfo, and costs no database write and no HSM command.
TEST_F(KmsGrpcTest, TerminalCallsOverBudgetAreResourceExhaustedAndTouchNothing) {
  absl::Mutex mu;
  absl::Time now = kNow;
  TerminalRateLimits limits{.per_source = {.per_second = 1, .burst = 8},
                            .per_subject = {.per_second = 0.5, .burst = 3},
                            .clock = [&] {
                              absl::MutexLock lock(&mu);
                              return now;
                            }};
  Replica limited(database().runtime_dsn(), *hsm_, tls_["kms"], limits);
  ASSERT_NE(limited.server, nullptr);
  auto mtms = Stub(limited, tls_["mtms"]);
  auto terminal = Terminal(limited);
  TestTerminal t("RATE-LIMIT-1", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(*mtms, t).ok());  // MTMS's RPC is not a terminal RPC: not counted

  // Three Begins for the SN pass (burst 3); the fourth is refused before the core.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Begin(*terminal, t).ok()) << i;
  const std::string rows = RowCounts();
  const int hsm_calls = hsm_->calls("AuthChallenge") + hsm_->calls("ImportAndChallenge");
  rkl::v1::BeginAuthenticationRequest req;
  req.set_sn(t.sn());
  req.set_rnd1(std::string(AsString(t.NewRnd1())));
  rkl::v1::BeginAuthenticationResponse resp;
  auto ctx = rpc::MakeClientContext(kTimeout);
  grpc::Status g = terminal->BeginAuthentication(ctx.get(), req, &resp);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(g.error_message(), HasSubstr("too many calls for this sn; retry in 2000 ms"));
  EXPECT_EQ(rpc::RetryDelayFromDetails(g), absl::Seconds(2));
  // Complete and Confirm for the SN draw on the same budget.
  EXPECT_EQ(Complete(*terminal, t, std::string(32, 'a'), Bytes(32)).status().code(),
            absl::StatusCode::kResourceExhausted);
  rkl::v1::ConfirmInstallationRequest confirm;
  confirm.set_session_id(std::string(32, 'a'));
  confirm.set_sn(t.sn());
  confirm.set_proof(std::string(16, 'p'));
  rkl::v1::ConfirmInstallationResponse confirmed;
  EXPECT_EQ(Call(*terminal, &rkl::v1::Kms::Stub::ConfirmInstallation, confirm, &confirmed).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RowCounts(), rows);
  EXPECT_EQ(hsm_->calls("AuthChallenge") + hsm_->calls("ImportAndChallenge"), hsm_calls);
  EXPECT_EQ(limited.service.rate_limited(), 3u);
  EXPECT_EQ(limited.Metric("rkl_kms_rate_limited_total"), 3);
  EXPECT_EQ(a_->Metric("rkl_kms_rate_limited_total"), 0);  // the unlimited replica refused none

  // The source has spent 3 + 3 of its 8: two more unknown SNs, then it is refused too,
  // whatever the SN.
  TestTerminal other("RATE-LIMIT-2", KeyAlgorithm::kAes128);
  TestTerminal third("RATE-LIMIT-3", KeyAlgorithm::kAes128);
  EXPECT_EQ(Begin(*terminal, other).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Begin(*terminal, other).status().code(), absl::StatusCode::kNotFound);
  absl::Status source = Begin(*terminal, third).status();
  EXPECT_EQ(source.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(source.message(), HasSubstr("too many calls from this address"));
  EXPECT_EQ(RetryDelay(source), absl::Seconds(1));
  EXPECT_EQ(RowCounts(), rows);
  EXPECT_EQ(limited.Metric("rkl_kms_rate_limited_total"), 4);

  // Once the hint has passed, the SN gets a token back (and the source one more).
  {
    absl::MutexLock lock(&mu);
    now += absl::Seconds(2);
  }
  EXPECT_TRUE(Begin(*terminal, t).ok());
  // Other replicas (no limits configured) are not affected.
  EXPECT_TRUE(Begin(*Terminal(*a_), t).ok());
}

// Issue 21, finding 2: 10,000 junk Begins through the real service — 4,000 for SNs KMS does
// not know, 2,000 for a real SN with a malformed Rnd1, 4,000 for the real SN each opening a
// session that is never answered — leave the tables bounded once the clock has passed the
// sessions' expiry plus the retention and the purge has run: no session; the refusals two
// counter rows, not 6,000 audit records; and one audit record per session opened
// (auth.begin: HSM #2 made a challenge; the audit is append-only). The bound is stated in
// docs/kms.md ("Bounded state").
TEST_F(KmsGrpcTest, TenThousandJunkBeginsLeaveBoundedTablesAfterThePurge) {
  constexpr int kUnknown = 4000;
  constexpr int kMalformed = 2000;
  constexpr int kOpened = 4000;
  constexpr int kThreads = 4;
  absl::Mutex mu;
  absl::Time now = kNow;
  Replica r(database().runtime_dsn(), *hsm_, tls_["kms"], {}, [&] {
    absl::MutexLock lock(&mu);
    return now;
  });
  ASSERT_NE(r.server, nullptr);
  TestTerminal t("JUNK-REAL", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(*Stub(r, tls_["mtms"]), t).ok());
  const std::map<std::string, int64_t> before = TableRows();

  std::vector<std::thread> workers;
  std::atomic<int> unknown_refused = 0;
  std::atomic<int> malformed_refused = 0;
  std::atomic<int> opened = 0;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      auto terminal = Terminal(r);
      TestTerminal caller(t.sn(), KeyAlgorithm::kAes128);  // a fresh Rnd1 per call
      for (int i = w; i < kUnknown + kMalformed + kOpened; i += kThreads) {
        if (i < kUnknown) {
          TestTerminal unknown(absl::StrCat("JUNK-", i), KeyAlgorithm::kAes128);
          if (Begin(*terminal, unknown).status().code() == absl::StatusCode::kNotFound) {
            ++unknown_refused;
          }
        } else if (i < kUnknown + kMalformed) {
          rkl::v1::BeginAuthenticationRequest req;
          req.set_sn(t.sn());
          req.set_rnd1("short");
          rkl::v1::BeginAuthenticationResponse resp;
          if (Call(*terminal, &rkl::v1::Kms::Stub::BeginAuthentication, req, &resp).code() ==
              absl::StatusCode::kInvalidArgument) {
            ++malformed_refused;
          }
        } else if (Begin(*terminal, caller).ok()) {
          ++opened;
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();
  ASSERT_EQ(unknown_refused.load(), kUnknown);
  ASSERT_EQ(malformed_refused.load(), kMalformed);
  ASSERT_EQ(opened.load(), kOpened);
  absl::StatusOr<int64_t> flushed = r.core.FlushRefusalCounts();
  ASSERT_TRUE(flushed.ok()) << flushed.status();
  EXPECT_EQ(*flushed, kUnknown + kMalformed);
  std::map<std::string, int64_t> junk = TableRows();
  EXPECT_EQ(junk["auth_sessions"], before.at("auth_sessions") + kOpened);

  // Expired, but within the retention: kept.
  {
    absl::MutexLock lock(&mu);
    now += absl::Seconds(60) + absl::Minutes(10) - absl::Milliseconds(1);
  }
  absl::StatusOr<int64_t> kept = r.core.PurgeExpiredSessions();
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, 0);
  {
    absl::MutexLock lock(&mu);
    now += absl::Milliseconds(2);
  }
  absl::StatusOr<int64_t> purged = r.core.PurgeExpiredSessions();
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, before.at("auth_sessions") + kOpened);
  ASSERT_TRUE(r.repository.audit_log().Seal().ok());

  const std::map<std::string, int64_t> after = TableRows();
  std::string counts;
  for (const auto& [table, n] : after) absl::StrAppend(&counts, table, "=", n, " ");
  RecordProperty("row_counts", counts);
  std::cout << "after 10,000 junk Begins and the purge: " << counts << "\n";
  EXPECT_EQ(after.at("terminals"), before.at("terminals"));
  EXPECT_EQ(after.at("sn_tk_kms"), before.at("sn_tk_kms"));
  EXPECT_EQ(after.at("auth_sessions"), 0);
  // One minute (the clock stood still while they came): one row per (SN or "*", action, code).
  EXPECT_EQ(after.at("refusal_counts"), 2);
  // Filed under the caller's address (the test's loopback connection), not under "*".
  EXPECT_EQ(Sql("SELECT count(*) FROM refusal_counts WHERE source = '*'")[0][0].as<int64_t>(), 0);
  EXPECT_EQ(Sql("SELECT count FROM refusal_counts WHERE sn = '*' AND reason = 'NOT_FOUND'")[0][0]
                .as<int64_t>(),
            kUnknown);
  EXPECT_EQ(Sql("SELECT count FROM refusal_counts WHERE sn = 'JUNK-REAL' AND "
                "reason = 'INVALID_ARGUMENT'")[0][0]
                .as<int64_t>(),
            kMalformed);
  EXPECT_EQ(after.at("audit_key"), before.at("audit_key"));
  EXPECT_EQ(after.at("audit_legacy"), before.at("audit_legacy"));
  // The refusals wrote no audit record; each opened session one auth.begin (the first
  // Begin also its tk.import).
  EXPECT_EQ(after.at("audit") + after.at("audit_pending"),
            before.at("audit") + before.at("audit_pending") + kOpened + 1);
  EXPECT_EQ(Sql("SELECT count(*) FROM audit WHERE sn LIKE 'JUNK-%' AND sn <> 'JUNK-REAL'")[0][0]
                .as<int64_t>(),
            0);
  // The terminal is as it was: nothing junk did counts against it.
  absl::StatusOr<rkl::v1::Terminal> terminal = AdminGet(t.sn());
  ASSERT_TRUE(terminal.ok()) << terminal.status();
  EXPECT_EQ(terminal->consecutive_failures(), 0u);

  // The counts go after refusals.retention (24 h by default).
  {
    absl::MutexLock lock(&mu);
    now += absl::Hours(24);
  }
  absl::StatusOr<int64_t> counts_purged = r.core.PurgeRefusalCounts();
  ASSERT_TRUE(counts_purged.ok()) << counts_purged.status();
  EXPECT_EQ(*counts_purged, 2);
  EXPECT_EQ(TableRows().at("refusal_counts"), 0);
}

// rkl_kms_terminals and rkl_kms_sessions_open, read from the tables at each scrape (every
// state × protocol, zeros included), and the counters of a delivery and a wrong proof.
TEST_F(KmsGrpcTest, MetricsFollowTheTerminalTableAndTheFlow) {
  const std::vector<std::string> states = {"tk_received",  "authenticated", "tmk_delivered",
                                           "installed",    "locked",        "revoked",
                                           "rekey_pending"};
  auto terminals = [&](const std::string& state, const std::string& protocol) {
    return a_->Metric("rkl_kms_terminals", {{"state", state}, {"protocol", protocol}});
  };
  // Each series against the table, the whole set at once.
  auto check_against_table = [&] {
    std::map<std::pair<std::string, std::string>, int64_t> rows;
    for (const auto& row : Sql("SELECT lower(state), protocol, count(*) FROM terminals "
                               "GROUP BY state, protocol")) {
      rows[{row[0].as<std::string>(), row[1].as<std::string>()}] = row[2].as<int64_t>();
    }
    for (const std::string& state : states) {
      for (const std::string protocol : {"patent", "tr34"}) {
        auto it = rows.find({state, protocol});
        EXPECT_EQ(terminals(state, protocol),
                  it == rows.end() ? 0.0 : static_cast<double>(it->second))
            << state << "/" << protocol;
      }
    }
  };
  check_against_table();
  EXPECT_EQ(a_->Metric("rkl_kms_sessions_open"), 0);

  auto mtms = Stub(*a_, tls_["mtms"]);
  auto terminal = Terminal(*a_);
  TestTerminal t("POS-METRICS-1", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(*mtms, t).ok());
  EXPECT_EQ(terminals("tk_received", "patent"), 1);
  // An open session counts until it is used up or expires.
  auto begun = Begin(*terminal, t);
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(a_->Metric("rkl_kms_sessions_open"), 1);
  EXPECT_EQ(b_->Metric("rkl_kms_sessions_open"), 1);  // the table's, not the replica's
  auto crnd2 = t.AnswerChallenge(AsBytes(begun->crnd1()), AsBytes(begun->rnd2()));
  ASSERT_TRUE(crnd2.ok());
  auto delivered = Complete(*terminal, t, begun->session_id(), *crnd2);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(a_->Metric("rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}), 1);
  EXPECT_EQ(b_->Metric("rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}), 0);
  EXPECT_EQ(terminals("tmk_delivered", "patent"), 1);
  EXPECT_EQ(terminals("tk_received", "patent"), 0);
  ASSERT_TRUE(t.AcceptKeyBlock(delivered->key_block(), delivered->tmk_kcv()).ok());
  ASSERT_TRUE(Confirm(*terminal, t, begun->session_id()).ok());
  EXPECT_EQ(terminals("installed", "patent"), 1);
  EXPECT_EQ(a_->Metric("rkl_kms_sessions_open"), 0);  // confirmed: not open any more
  EXPECT_EQ(a_->Metric("rkl_kms_auth_failures_total"), 0);

  // A wrong Crnd2 from another terminal: one failed proof.
  TestTerminal u("POS-METRICS-2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(*mtms, u).ok());
  auto opened = Begin(*terminal, u);
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto answer = u.AnswerChallenge(AsBytes(opened->crnd1()), AsBytes(opened->rnd2()));
  ASSERT_TRUE(answer.ok());
  (*answer)[0] ^= 0x01;
  EXPECT_EQ(Complete(*terminal, u, opened->session_id(), *answer).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a_->Metric("rkl_kms_auth_failures_total"), 1);
  EXPECT_EQ(a_->Metric("rkl_kms_lockouts_total"), 0);
  EXPECT_EQ(a_->Metric("rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}), 1);
  check_against_table();
  EXPECT_EQ(a_->Metric("rkl_metrics_refresh_errors_total", {{"source", "kms_terminals"}}), -1);
  // No SN in any series (label values are enum names).
  const std::string exposition = a_->metrics.Render();
  EXPECT_THAT(exposition, HasSubstr("rkl_kms_terminals{"));
  EXPECT_THAT(exposition, Not(HasSubstr("POS-METRICS")));
}

TEST(PeerAddressTest, DropsThePort) {
  EXPECT_EQ(rpc::PublicCallGate::PeerAddress("ipv4:10.1.2.3:5555"), "10.1.2.3");
  EXPECT_EQ(rpc::PublicCallGate::PeerAddress("ipv6:[::1]:5555"), "::1");
  EXPECT_EQ(rpc::PublicCallGate::PeerAddress("ipv6:%5B::1%5D:5555"), "%5B::1%5D");
  EXPECT_EQ(rpc::PublicCallGate::PeerAddress("unix:/tmp/s"), "unix:/tmp/s");
}

TEST_F(KmsGrpcTest, IntakeIsForMtmsOnly) {
  TestTerminal t("POS-AUTHZ", KeyAlgorithm::kAes128);
  for (std::string who : {"admin:alice", "kms", "hsm-kms"}) {
    auto stub = Stub(*a_, tls_[who]);
    auto r = Submit(*stub, t);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << who;
  }
  auto anonymous = Terminal(*a_);
  EXPECT_EQ(Submit(*anonymous, t).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(AdminGet(t.sn()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Sql("SELECT count(*) FROM terminals")[0][0].as<int>(), 0);
}

TEST_F(KmsGrpcTest, BatchIntakeIsForMtmsOnlyAndAnswersEachItem) {
  TestTerminal good("POS-GRPC-BATCH", KeyAlgorithm::kAes128);
  auto ctk = good.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(ctk.ok());
  rkl::v1::KmsSubmitTransportKeysRequest req;
  auto* item = req.add_items();
  item->set_sn(good.sn());
  item->set_ctk_pk(std::string(AsString(*ctk)));
  item->set_mtms_submission_id("b1");
  item = req.add_items();
  item->set_sn("not an sn");
  item->set_ctk_pk(std::string(AsString(*ctk)));
  rkl::v1::KmsSubmitTransportKeysResponse resp;
  for (std::string who : {"admin:alice", "kms", "hsm-kms"}) {
    auto stub = Stub(*a_, tls_[who]);
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::SubmitTransportKeys, req, &resp).code(),
              absl::StatusCode::kPermissionDenied)
        << who;
  }
  auto anonymous = Terminal(*a_);
  EXPECT_EQ(Call(*anonymous, &rkl::v1::Kms::Stub::SubmitTransportKeys, req, &resp).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Sql("SELECT count(*) FROM terminals")[0][0].as<int>(), 0);

  auto mtms = Stub(*a_, tls_["mtms"]);
  ASSERT_TRUE(Call(*mtms, &rkl::v1::Kms::Stub::SubmitTransportKeys, req, &resp).ok());
  ASSERT_EQ(resp.outcomes_size(), 2);
  EXPECT_EQ(resp.outcomes(0).code(), 0);
  EXPECT_EQ(resp.outcomes(0).state(), rkl::v1::TERMINAL_STATE_TK_RECEIVED);
  EXPECT_FALSE(resp.outcomes(0).duplicate());
  EXPECT_EQ(resp.outcomes(1).code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(resp.outcomes(1).message(), HasSubstr("sn"));
  EXPECT_EQ(AdminGet(good.sn())->state(), rkl::v1::TERMINAL_STATE_TK_RECEIVED);

  rkl::v1::KmsSubmitTransportKeysRequest empty;
  EXPECT_EQ(Call(*mtms, &rkl::v1::Kms::Stub::SubmitTransportKeys, empty, &resp).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(KmsGrpcTest, BatchItemsAreServedUnderTheirOwnRequestIds) {
  // Item A names its flow's id; item B's is malformed, so B goes under the call's own id.
  const std::string call_id(32, 'c'), id_a(32, 'a');
  rkl::v1::KmsSubmitTransportKeysRequest req;
  for (const char* sn : {"POS-RID-A", "POS-RID-B"}) {
    TestTerminal t(sn, KeyAlgorithm::kAes128);
    auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    ASSERT_TRUE(ctk.ok());
    auto* item = req.add_items();
    item->set_sn(sn);
    item->set_ctk_pk(std::string(AsString(*ctk)));
  }
  req.add_request_ids(id_a);
  req.add_request_ids("not a request id");
  auto mtms = Stub(*a_, tls_["mtms"]);
  rkl::v1::KmsSubmitTransportKeysResponse resp;
  {
    const ScopedRequestId call(call_id);
    ASSERT_TRUE(Call(*mtms, &rkl::v1::Kms::Stub::SubmitTransportKeys, req, &resp).ok());
  }
  ASSERT_EQ(resp.outcomes_size(), 2);
  for (const auto& o : resp.outcomes()) EXPECT_EQ(o.code(), 0) << o.message();
  auto received_under = [&](const std::string& sn) {
    pqxx::result r =
        Sql("SELECT request_id FROM (SELECT sn, action, request_id FROM audit "
            "UNION ALL SELECT sn, action, request_id FROM audit_pending) x "
            "WHERE action = 'tk.receive' AND sn = '" +
            sn + "'");
    return r.size() == 1 ? r[0][0].as<std::string>() : std::string("(none or several)");
  };
  EXPECT_EQ(received_under("POS-RID-A"), id_a);
  EXPECT_EQ(received_under("POS-RID-B"), call_id);
}

TEST_F(KmsGrpcTest, OverlappingBatchesOnTwoReplicasStoreEachSnOnce) {
  // The same SNs, in opposite orders, sent to both replicas at once: every item is answered
  // OK, and each SN is stored (not a duplicate) by exactly one of the two calls.
  auto on_a = Stub(*a_, tls_["mtms"]);
  auto on_b = Stub(*b_, tls_["mtms"]);
  constexpr int kRounds = 3, kSns = 12;
  for (int round = 0; round < kRounds; ++round) {
    rkl::v1::KmsSubmitTransportKeysRequest forward, backward;
    for (int i = 0; i < kSns; ++i) {
      TestTerminal t(absl::StrCat("POS-OVERLAP-", round, "-", i), KeyAlgorithm::kAes128);
      auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
      ASSERT_TRUE(ctk.ok());
      auto* item = forward.add_items();
      item->set_sn(t.sn());
      item->set_ctk_pk(std::string(AsString(*ctk)));
      item->set_mtms_submission_id(absl::StrCat("o", i));
    }
    for (int i = kSns - 1; i >= 0; --i) *backward.add_items() = forward.items(i);
    const rkl::v1::KmsSubmitTransportKeysRequest* requests[2] = {&forward, &backward};
    rkl::v1::Kms::Stub* stubs[2] = {on_a.get(), on_b.get()};
    rkl::v1::KmsSubmitTransportKeysResponse answers[2];
    absl::Status status[2];
    std::latch go(2);
    std::thread threads[2];
    for (int i = 0; i < 2; ++i) {
      threads[i] = std::thread([&, i] {
        go.arrive_and_wait();
        status[i] =
            Call(*stubs[i], &rkl::v1::Kms::Stub::SubmitTransportKeys, *requests[i], &answers[i]);
      });
    }
    for (auto& th : threads) th.join();
    std::map<std::string, int> stored;
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(status[i].ok()) << status[i];
      ASSERT_EQ(answers[i].outcomes_size(), kSns);
      for (int n = 0; n < kSns; ++n) {
        EXPECT_EQ(answers[i].outcomes(n).code(), 0) << answers[i].outcomes(n).message();
        if (!answers[i].outcomes(n).duplicate()) ++stored[requests[i]->items(n).sn()];
      }
    }
    for (const auto& item : forward.items()) EXPECT_EQ(stored[item.sn()], 1) << item.sn();
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM terminals")[0][0].as<int>(), kRounds * kSns);
  EXPECT_EQ(Sql("SELECT (SELECT count(*) FROM audit_pending WHERE action = 'tk.receive') + "
                "(SELECT count(*) FROM audit WHERE action = 'tk.receive')")[0][0]
                .as<int>(),
            kRounds * kSns);
}

TEST_F(KmsGrpcTest, AdminRpcsAreForAdminsOnly) {
  for (std::string who : {"mtms", "kms", ""}) {
    auto stub = who.empty() ? Terminal(*a_) : Stub(*a_, tls_[who]);
    rkl::v1::GetTerminalRequest get;
    get.set_sn("POS-X");
    rkl::v1::Terminal terminal;
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::GetTerminal, get, &terminal).code(),
              absl::StatusCode::kPermissionDenied)
        << who;
    rkl::v1::TerminalAdminRequest admin;
    admin.set_sn("POS-X");
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::UnlockTerminal, admin, &terminal).code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::RevokeTerminal, admin, &terminal).code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::MarkForRekey, admin, &terminal).code(),
              absl::StatusCode::kPermissionDenied);
    rkl::v1::Statistics stats;
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::GetStatistics, rkl::v1::Empty(), &stats).code(),
              absl::StatusCode::kPermissionDenied);
    rkl::v1::ListTerminalsResponse list;
    EXPECT_EQ(
        Call(*stub, &rkl::v1::Kms::Stub::ListTerminals, rkl::v1::ListTerminalsRequest(), &list)
            .code(),
        absl::StatusCode::kPermissionDenied);
    rkl::v1::ListAuditResponse audit;
    EXPECT_EQ(
        Call(*stub, &rkl::v1::Kms::Stub::ListAudit, rkl::v1::ListAuditRequest(), &audit).code(),
        absl::StatusCode::kPermissionDenied);
    rkl::v1::VerifyAuditChainResponse verified;
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::VerifyAuditChain, rkl::v1::VerifyAuditChainRequest(),
                   &verified)
                  .code(),
              absl::StatusCode::kPermissionDenied);
  }
  auto admin = Stub(*a_, tls_["admin:alice"]);
  rkl::v1::Statistics stats;
  EXPECT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::GetStatistics, rkl::v1::Empty(), &stats).ok());
}

TEST_F(KmsGrpcTest, TamperedCtkPkIsUnauthenticatedOverGrpc) {
  auto mtms = Stub(*a_, tls_["mtms"]);
  TestTerminal t("POS-GRPC-TAMPER", KeyAlgorithm::kAes256);
  auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(ctk.ok());
  (*ctk)[ctk->size() - 1] ^= 0x01;  // the MAC itself
  rkl::v1::KmsSubmitTransportKeyRequest req;
  req.set_sn(t.sn());
  req.set_ctk_pk(std::string(AsString(*ctk)));
  rkl::v1::KmsSubmitTransportKeyResponse resp;
  ASSERT_TRUE(Call(*mtms, &rkl::v1::Kms::Stub::SubmitTransportKey, req, &resp).ok());
  auto before = AdminGet(t.sn());
  ASSERT_TRUE(before.ok());
  auto terminal = Terminal(*a_);
  EXPECT_EQ(Begin(*terminal, t).status().code(), absl::StatusCode::kUnauthenticated);
  auto after = AdminGet(t.sn());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->SerializeAsString(), before->SerializeAsString());
  EXPECT_EQ(Sql("SELECT count(*) FROM auth_sessions")[0][0].as<int>(), 0);
}

TEST_F(KmsGrpcTest, AuthenticationBegunOnOneReplicaCompletesOnTheOther) {
  auto mtms = Stub(*a_, tls_["mtms"]);
  TestTerminal t("POS-TWO-REPLICAS", KeyAlgorithm::kTdes2);
  ASSERT_TRUE(Submit(*mtms, t).ok());
  auto on_a = Terminal(*a_);
  auto on_b = Terminal(*b_);
  absl::Status s = RunTerminal(t, *on_a, *on_b);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(AdminGet(t.sn())->state(), rkl::v1::TERMINAL_STATE_INSTALLED);
}

TEST_F(KmsGrpcTest, ADoubleSubmitOnTwoReplicasSucceedsExactlyOnce) {
  auto mtms = Stub(*a_, tls_["mtms"]);
  auto on_a = Terminal(*a_);
  auto on_b = Terminal(*b_);
  for (int round = 0; round < 5; ++round) {
    TestTerminal t("POS-RACE-" + std::to_string(round), KeyAlgorithm::kAes128);
    ASSERT_TRUE(Submit(*mtms, t).ok());
    auto begun = Begin(*on_a, t);
    ASSERT_TRUE(begun.ok()) << begun.status();
    auto crnd2 = t.AnswerChallenge(AsBytes(begun->crnd1()), AsBytes(begun->rnd2()));
    ASSERT_TRUE(crnd2.ok());
    std::latch go(2);
    absl::Status results[2];
    std::thread threads[2];
    rkl::v1::Kms::Stub* stubs[2] = {on_a.get(), on_b.get()};
    for (int i = 0; i < 2; ++i) {
      threads[i] = std::thread([&, i] {
        go.arrive_and_wait();
        results[i] = Complete(*stubs[i], t, begun->session_id(), *crnd2).status();
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(rkl::testing::CountWinners(results, absl::StatusCode::kFailedPrecondition), 1)
        << "round " << round;
  }
}

TEST_F(KmsGrpcTest, ThousandTerminalsGetThousandDistinctTmks) {
  constexpr int kTerminals = 1000;
  constexpr int kThreads = 8;
  std::vector<std::unique_ptr<TestTerminal>> terminals;
  for (int i = 0; i < kTerminals; ++i) {
    char sn[32];
    std::snprintf(sn, sizeof sn, "FLEET-%04d", i);
    terminals.push_back(std::make_unique<TestTerminal>(sn, KeyAlgorithm::kAes128));
  }
  std::vector<absl::Status> results(kTerminals);
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      auto mtms = Stub(*a_, tls_["mtms"]);
      auto on_a = Terminal(*a_);
      auto on_b = Terminal(*b_);
      for (int i = w; i < kTerminals; i += kThreads) {
        absl::StatusOr<rkl::v1::KmsSubmitTransportKeyResponse> s = Submit(*mtms, *terminals[i]);
        results[i] = s.ok() ? (i % 2 ? RunTerminal(*terminals[i], *on_a, *on_b)
                                     : RunTerminal(*terminals[i], *on_b, *on_a))
                            : s.status();
        // Both replicas seal their audit chain while every worker writes: one chain.
        if (i % 40 < kThreads) {
          absl::StatusOr<uint64_t> sealed = (w % 2 ? a_ : b_)->repository.audit_log().Seal();
          EXPECT_TRUE(sealed.ok()) << sealed.status();
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  for (int i = 0; i < kTerminals; ++i) ASSERT_TRUE(results[i].ok()) << i << ": " << results[i];

  // The real proof: the keys the terminals hold are pairwise different.
  std::set<Bytes> fingerprints;
  for (const auto& t : terminals) fingerprints.insert(*t->TmkFingerprint());
  EXPECT_EQ(fingerprints.size(), static_cast<size_t>(kTerminals));

  // And the database agrees: 1,000 installed terminals, 1,000 distinct TMK indexes.
  pqxx::row counts =
      Sql("SELECT count(*), count(DISTINCT tmk_index), count(DISTINCT tmk_kcv),"
          " count(*) FILTER (WHERE state = 'INSTALLED') FROM terminals")[0];
  EXPECT_EQ(counts[0].as<int>(), kTerminals);
  EXPECT_EQ(counts[1].as<int>(), kTerminals);
  EXPECT_EQ(counts[3].as<int>(), kTerminals);
  // KCVs are 24 bits: among 1,000 keys a chance collision (~3%) is possible and is not a
  // defect. Every equal KCV must then belong to keys the terminals hold as different.
  int kcv_collisions = kTerminals - counts[2].as<int>();
  std::set<std::string> kcvs;
  for (const auto& t : terminals) kcvs.insert(t->tmk_kcv());
  EXPECT_EQ(static_cast<int>(kcvs.size()), kTerminals - kcv_collisions);
  if (kcv_collisions > 0) std::cout << "note: " << kcv_collisions << " chance KCV collision(s)\n";

  auto admin = Stub(*a_, tls_["admin:alice"]);
  rkl::v1::Statistics stats;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::GetStatistics, rkl::v1::Empty(), &stats).ok());
  EXPECT_EQ(stats.terminals_total(), static_cast<uint64_t>(kTerminals));
  EXPECT_EQ(stats.terminals_by_state().at("INSTALLED"), static_cast<uint64_t>(kTerminals));
  EXPECT_EQ(stats.distinct_tmk_kcvs(), static_cast<uint64_t>(counts[2].as<int>()));

  // The audit both replicas wrote and sealed at once is one intact chain, every record in it.
  rkl::v1::VerifyAuditChainResponse verified;
  ASSERT_TRUE(Call(*Stub(*b_, tls_["admin:alice"]), &rkl::v1::Kms::Stub::VerifyAuditChain,
                   rkl::v1::VerifyAuditChainRequest(), &verified)
                  .ok());
  EXPECT_TRUE(verified.intact()) << verified.finding();
  pqxx::row chain = Sql("SELECT count(*), coalesce(max(seq), 0) FROM audit")[0];
  EXPECT_EQ(verified.records_checked(), chain[0].as<uint64_t>());
  EXPECT_EQ(chain[1].as<int64_t>(), chain[0].as<int64_t>());  // seqs 1..n, no gap
  EXPECT_GE(chain[0].as<int>(), kTerminals);
  EXPECT_EQ(Sql("SELECT count(*) FROM audit_pending")[0][0].as<int>(), 0);
}

TEST_F(KmsGrpcTest, TheDatabaseRefusesTwoTerminalsWithOneTmk) {
  auto mtms = Stub(*a_, tls_["mtms"]);
  auto terminal = Terminal(*a_);
  TestTerminal x("POS-UNIQ-X", KeyAlgorithm::kAes128);
  TestTerminal y("POS-UNIQ-Y", KeyAlgorithm::kAes128);
  for (TestTerminal* t : {&x, &y}) {
    ASSERT_TRUE(Submit(*mtms, *t).ok());
    ASSERT_TRUE(RunTerminal(*t, *terminal, *terminal).ok());
  }
  try {
    Sql("UPDATE terminals SET tmk_index = (SELECT tmk_index FROM terminals WHERE sn = "
        "'POS-UNIQ-X'), tmk_kcv = (SELECT tmk_kcv FROM terminals WHERE sn = 'POS-UNIQ-X') "
        "WHERE sn = 'POS-UNIQ-Y'");
    ADD_FAILURE() << "a shared TMK index was accepted";
  } catch (const pqxx::unique_violation& e) {
    EXPECT_THAT(e.what(), HasSubstr("terminals_tmk_index_key"));
  }
  // One terminal row per SN as well.
  EXPECT_THROW(Sql("INSERT INTO terminals (sn, state, algorithm, created_at_ms, updated_at_ms)"
                   " VALUES ('POS-UNIQ-X', 'TK_RECEIVED', 17, 0, 0)"),
               pqxx::unique_violation);
}

TEST_F(KmsGrpcTest, MigrationsAreIdempotent) {
  auto again = database().Migrate();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0);
}

// ---- TR-34 ------------------------------------------------------------------------------

// A replica with TR-34 configured: FakeCa as kdh-ca, one trusted KRD CA.
class KmsTr34GrpcTest : public KmsGrpcTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(KmsGrpcTest::SetUp());
    ca_ = std::make_unique<FakeCa>([] { return kNow; });
    krd_ca_ = std::make_unique<Tr34Party>(NewTr34Ca("rkl test KRD CA", absl::ToUnixSeconds(kNow)));
    hsm_->SetTrustedKrdCas({krd_ca_->cert});
    tr34_ = std::make_unique<Replica>(
        database().runtime_dsn(), *hsm_, tls_["kms"], Limits(), [] { return kNow; }, ca_.get(),
        std::vector<crypto::Certificate>{krd_ca_->cert});
    ASSERT_NE(tr34_->server, nullptr);
  }
  virtual TerminalRateLimits Limits() { return {}; }

  TestKrd NewKrd(const std::string& sn) {
    return TestKrd{NewTr34EndEntity(sn, crypto::KeyUsage::kKeyEncipherment, *krd_ca_,
                                    absl::ToUnixSeconds(kNow)),
                   {}};
  }

  absl::StatusOr<rkl::v1::RequestKeyTokenResponse> RequestToken(rkl::v1::Kms::Stub& stub,
                                                                TestKrd& krd) {
    rkl::v1::RequestKeyTokenRequest req;
    req.set_sn(krd.party.cert.SubjectCommonName());
    req.set_ct_krd(std::string(AsString(krd.CtKrd())));
    req.set_rt_krd(std::string(AsString(krd.NewRtKrd())));
    rkl::v1::RequestKeyTokenResponse resp;
    absl::Status s = Call(stub, &rkl::v1::Kms::Stub::RequestKeyToken, req, &resp);
    if (!s.ok()) return s;
    return resp;
  }

  std::unique_ptr<FakeCa> ca_;
  std::unique_ptr<Tr34Party> krd_ca_;
  std::unique_ptr<Replica> tr34_;
};

TEST_F(KmsTr34GrpcTest, Tr34TerminalCompletesTheFlowOverTls) {
  auto admin = Stub(*tr34_, tls_["admin:alice"]);
  auto terminal = Terminal(*tr34_);
  rkl::v1::ProvisionKdhKeyRequest provision;
  rkl::v1::KdhKey kdh;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::ProvisionKdhKey, provision, &kdh).ok());
  EXPECT_TRUE(kdh.active());
  absl::StatusOr<crypto::Certificate> kdh_cert =
      crypto::Certificate::FromPem(kdh.certificate_pem());
  ASSERT_TRUE(kdh_cert.ok()) << kdh_cert.status();
  EXPECT_EQ(kdh_cert->SerialHex(), kdh.serial_hex());
  rkl::v1::ListKdhKeysResponse keys;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::ListKdhKeys, rkl::v1::Empty(), &keys).ok());
  ASSERT_EQ(keys.keys_size(), 1);
  EXPECT_EQ(keys.keys(0).key_index(), kdh.key_index());

  // The terminal: CT_KDH, checked against its burned-in kdh-ca.
  rkl::v1::GetKdhCredentialRequest get;
  rkl::v1::GetKdhCredentialResponse cred;
  ASSERT_TRUE(Call(*terminal, &rkl::v1::Kms::Stub::GetKdhCredential, get, &cred).ok());
  absl::StatusOr<tr34::CredentialToken> ct = tr34::ParseCredentialToken(AsBytes(cred.ct_kdh()));
  ASSERT_TRUE(ct.ok()) << ct.status();
  ASSERT_EQ(ct->certificates.size(), 1u);
  EXPECT_TRUE(tr34::CheckRole(ct->certificates[0], tr34::Role::kKdh, ca_->kdh_ca().cert).ok());
  EXPECT_TRUE(tr34::CheckKdhNotRevoked(ct->certificates[0], ct->crls, ca_->kdh_ca().cert,
                                       absl::ToUnixSeconds(kNow))
                  .ok());

  TestKrd krd = NewKrd("TR34-GRPC");
  absl::StatusOr<rkl::v1::RequestKeyTokenResponse> token = RequestToken(*terminal, krd);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->state(), rkl::v1::TERMINAL_STATE_TMK_DELIVERED);
  absl::StatusOr<crypto::SecretBytes> tmk = krd.Accept(
      Bytes(token->key_token().begin(), token->key_token().end()), ct->certificates[0],
      ca_->kdh_ca().cert, KeyAlgorithm::kAes128, token->tmk_kcv(), absl::ToUnixSeconds(kNow));
  ASSERT_TRUE(tmk.ok()) << tmk.status();
  absl::StatusOr<Bytes> proof =
      tr34::InstallProof(KeyAlgorithm::kAes128, *tmk, "TR34-GRPC", krd.nonce);
  ASSERT_TRUE(proof.ok());
  rkl::v1::ConfirmKeyTokenRequest confirm;
  confirm.set_sn("TR34-GRPC");
  confirm.set_proof(std::string(AsString(*proof)));
  rkl::v1::ConfirmInstallationResponse confirmed;
  ASSERT_TRUE(Call(*terminal, &rkl::v1::Kms::Stub::ConfirmKeyToken, confirm, &confirmed).ok());
  EXPECT_EQ(confirmed.state(), rkl::v1::TERMINAL_STATE_INSTALLED);

  rkl::v1::GetTerminalRequest which;
  which.set_sn("TR34-GRPC");
  rkl::v1::Terminal shown;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::GetTerminal, which, &shown).ok());
  EXPECT_EQ(shown.protocol(), rkl::v1::TERMINAL_PROTOCOL_TR34);
  EXPECT_EQ(shown.krd_id().size(), 64u);
  EXPECT_EQ(shown.state(), rkl::v1::TERMINAL_STATE_INSTALLED);
  rkl::v1::Statistics stats;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::GetStatistics, rkl::v1::Empty(), &stats).ok());
  EXPECT_EQ(stats.terminals_by_protocol().at("TR34"), 1u);

  // Registration: per-item outcome, in request order.
  TestKrd next = NewKrd("TR34-GRPC-2");
  rkl::v1::RegisterKrdCredentialsRequest reg;
  reg.add_ct_krd(std::string(AsString(next.CtKrd())));
  reg.add_ct_krd("junk");
  reg.add_ct_krd(std::string(AsString(krd.CtKrd())));
  rkl::v1::RegisterKrdCredentialsResponse regs;
  ASSERT_TRUE(Call(*admin, &rkl::v1::Kms::Stub::RegisterKrdCredentials, reg, &regs).ok());
  ASSERT_EQ(regs.results_size(), 3);
  EXPECT_EQ(regs.results(0).code(), 0);
  EXPECT_EQ(regs.results(0).sn(), "TR34-GRPC-2");
  EXPECT_FALSE(regs.results(0).duplicate());
  EXPECT_EQ(regs.results(1).code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(regs.results(1).message(), HasSubstr("ct_krd"));
  EXPECT_EQ(regs.results(2).code(), 0);
  EXPECT_TRUE(regs.results(2).duplicate());
  EXPECT_EQ(regs.results(2).krd_id(), shown.krd_id());
}

TEST_F(KmsTr34GrpcTest, Tr34AdministrationIsForAdminsOnly) {
  for (std::string who : {"mtms", "kms", ""}) {
    auto stub = who.empty() ? Terminal(*tr34_) : Stub(*tr34_, tls_[who]);
    rkl::v1::KdhKey kdh;
    EXPECT_EQ(
        Call(*stub, &rkl::v1::Kms::Stub::ProvisionKdhKey, rkl::v1::ProvisionKdhKeyRequest(), &kdh)
            .code(),
        absl::StatusCode::kPermissionDenied)
        << who;
    rkl::v1::ListKdhKeysResponse keys;
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::ListKdhKeys, rkl::v1::Empty(), &keys).code(),
              absl::StatusCode::kPermissionDenied);
    rkl::v1::RegisterKrdCredentialsRequest reg;
    reg.add_ct_krd("x");
    rkl::v1::RegisterKrdCredentialsResponse regs;
    EXPECT_EQ(Call(*stub, &rkl::v1::Kms::Stub::RegisterKrdCredentials, reg, &regs).code(),
              absl::StatusCode::kPermissionDenied);
  }
  EXPECT_EQ(hsm_->kdh_keys(), 0);
}

TEST_F(KmsTr34GrpcTest, Tr34RpcsAnswerNotConfiguredOnAReplicaWithoutTr34) {
  auto terminal = Terminal(*a_);  // the plain replica: no CA, no KRD CA
  rkl::v1::GetKdhCredentialResponse cred;
  absl::Status s = Call(*terminal, &rkl::v1::Kms::Stub::GetKdhCredential,
                        rkl::v1::GetKdhCredentialRequest(), &cred);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("tr34: not configured"));
  TestKrd krd = NewKrd("TR34-OFF");
  s = RequestToken(*terminal, krd).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("tr34: not configured"));
}

class KmsTr34LimitedGrpcTest : public KmsTr34GrpcTest {
 protected:
  TerminalRateLimits Limits() override {
    return TerminalRateLimits{.per_source = {.per_second = 1, .burst = 100},
                              .per_subject = {.per_second = 0.5, .burst = 3},
                              .clock = [] { return kNow; }};
  }
};

TEST_F(KmsTr34LimitedGrpcTest, Tr34TerminalCallsDrawOnTheTerminalBudget) {
  auto admin = Stub(*tr34_, tls_["admin:alice"]);
  rkl::v1::KdhKey kdh;
  ASSERT_TRUE(
      Call(*admin, &rkl::v1::Kms::Stub::ProvisionKdhKey, rkl::v1::ProvisionKdhKeyRequest(), &kdh)
          .ok());
  auto terminal = Terminal(*tr34_);
  TestKrd krd = NewKrd("TR34-RATE");
  // Three calls for the SN pass (burst 3), whichever TR-34 RPC; the fourth is refused
  // before the core: HSM #2 is not asked.
  rkl::v1::GetKdhCredentialRequest get;
  get.set_sn("TR34-RATE");
  rkl::v1::GetKdhCredentialResponse cred;
  ASSERT_TRUE(Call(*terminal, &rkl::v1::Kms::Stub::GetKdhCredential, get, &cred).ok());
  ASSERT_TRUE(RequestToken(*terminal, krd).ok());
  ASSERT_TRUE(RequestToken(*terminal, krd).ok());
  const int built = hsm_->calls("BuildKeyToken");
  absl::Status s = RequestToken(*terminal, krd).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(hsm_->calls("BuildKeyToken"), built);
  rkl::v1::ConfirmKeyTokenRequest confirm;
  confirm.set_sn("TR34-RATE");
  confirm.set_proof(std::string(16, 'p'));
  rkl::v1::ConfirmInstallationResponse confirmed;
  EXPECT_EQ(Call(*terminal, &rkl::v1::Kms::Stub::ConfirmKeyToken, confirm, &confirmed).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(hsm_->calls("VerifyKeyTokenInstallProof"), 0);
}

}  // namespace
}  // namespace rkl::kms::testing
