// rkl-kms against the real HSM #2: rkl-hsm (hsm_daemon) running in-process on its own
// PostgreSQL database over mTLS, PK and MAK entered by a dual-control key ceremony with
// RSA-OAEP-encrypted components, KMS on its own database reaching the HSM through
// GrpcHsmPort. The test terminal (test_terminal.h, from PROTOCOL.md only) knows PK and MAK
// only because the test played both custodians.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <pqxx/pqxx>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "grpc_hsm_port.h"
#include "hsm_daemon.h"
#include "kms_core.h"
#include "kms_db_roles.h"
#include "kms_pg_repository.h"
#include "rkl/common/retry_delay.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/kms/migrations.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/status.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/test_pki.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "test_terminal.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr absl::Duration kTimeout = absl::Seconds(30);
constexpr char kAlice[] = "admin:alice";

// One KMS replica on the shared KMS database, with its own pool and HSM channel.
struct KmsReplica {
  KmsReplica(const std::string& dsn, std::shared_ptr<grpc::Channel> hsm_channel, Clock clock,
             KmsCoreOptions options)
      : pool(db::PoolOptions{.dsn = dsn, .max_size = 8}),
        repository(pool, crypto::SecretBytes(32)),  // every replica: one key
        hsm(std::move(hsm_channel), kTimeout),
        core(repository, hsm, std::move(clock), crypto::FillRandom, options) {}
  db::ConnectionPool pool;
  PgKmsRepository repository;
  GrpcHsmPort hsm;
  KmsCore core;
};

class KmsIntegrationTest : public rkl::testing::PgFixture {
 protected:
  KmsIntegrationTest() : PgFixture({.migrations = Migrations(), .grants = kKmsRuntimeGrants}) {}

  struct Result {
    uint64_t index = 0;
    SecretBytes key;
  };

  static void SetUpTestSuite() {
    auto pki = rkl::testing::TestPki::Create();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = pki->release();
    for (const char* id :
         {"hsm-kms", "kms", "admin:alice", "admin:bob", "custodian:alice", "custodian:bob"}) {
      auto files = pki_->Issue(id);
      ASSERT_TRUE(files.ok()) << files.status();
      (*tls_)[id] = *files;
    }
    auto hsm_db = rkl::testing::TestDatabase::Create();
    ASSERT_TRUE(hsm_db.ok()) << hsm_db.status();
    hsm_db_ = new rkl::testing::TestDatabase(*std::move(hsm_db));

    // The LMK: 64 hex digits in a file only we can read.
    std::string lmk_file = pki_->dir() + "/lmk.hex";
    Bytes lmk = crypto::RandomBytes(32);
    std::ofstream(lmk_file) << ToHex(lmk) << "\n";
    ::chmod(lmk_file.c_str(), 0600);

    hsm::HsmDaemonOptions options;
    options.hsm_id = "hsm-kms";
    options.role = hsm::HsmRole::kKms;
    options.database_dsn = hsm_db_->runtime_dsn();
    options.owner_dsn = hsm_db_->owner_dsn();
    options.lmk_file = lmk_file;
    options.operational_identities = {"kms"};
    options.listen_address = "127.0.0.1:0";
    options.tls = (*tls_)["hsm-kms"];
    auto daemon = hsm::HsmDaemon::Start(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = daemon->release();

    // S101: PK and MAK, each from two custodians' components.
    for (auto [type, out] :
         {std::pair{rkl::v1::KEY_TYPE_PK, &pk_}, std::pair{rkl::v1::KEY_TYPE_MAK, &mak_}}) {
      ASSERT_NO_FATAL_FAILURE(RunCeremony(type, *out));
    }
  }

  static void TearDownTestSuite() {
    delete daemon_;
    delete hsm_db_;
    delete pki_;
  }

  static std::shared_ptr<grpc::Channel> HsmChannel(const std::string& identity) {
    rpc::ChannelOptions options;
    options.tls = (*tls_)[identity];
    options.authority = "hsm-kms";
    auto channel = rpc::MakeChannel("127.0.0.1:" + std::to_string(daemon_->port()), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return *channel;
  }

  static void RunCeremony(rkl::v1::KeyType type, Result& out) {
    auto alice = rkl::v1::Hsm::NewStub(
        std::shared_ptr<grpc::ChannelInterface>(HsmChannel("custodian:alice")));
    auto bob =
        rkl::v1::Hsm::NewStub(std::shared_ptr<grpc::ChannelInterface>(HsmChannel("custodian:bob")));
    rkl::v1::BeginCeremonyRequest begin;
    begin.set_label(type == rkl::v1::KEY_TYPE_PK ? "PK-TEST" : "MAK-TEST");
    begin.set_key_type(type);
    begin.set_component_count(2);
    rkl::v1::BeginCeremonyResponse ceremony;
    auto ctx = rpc::MakeClientContext(kTimeout);
    grpc::Status st = alice->BeginCeremony(ctx.get(), begin, &ceremony);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto cek = crypto::PublicKey::FromDer(AsBytes(ceremony.component_encryption_key_der()));
    ASSERT_TRUE(cek.ok()) << cek.status();
    std::string label_text = "RKL-COMPONENT:" + ceremony.ceremony_id();
    SecretBytes combined(32);
    for (rkl::v1::Hsm::Stub* custodian : {alice.get(), bob.get()}) {
      SecretBytes component = crypto::RandomSecret(32);
      for (size_t i = 0; i < 32; ++i) {
        combined.RevealSecretMutable()[i] ^= component.RevealSecret()[i];
      }
      auto encrypted = crypto::RsaOaepEncrypt(*cek, component, AsBytes(label_text));
      ASSERT_TRUE(encrypted.ok()) << encrypted.status();
      rkl::v1::AddComponentRequest add;
      add.set_ceremony_id(ceremony.ceremony_id());
      add.set_encrypted_component(std::string(AsString(*encrypted)));
      rkl::v1::AddComponentResponse added;
      auto add_ctx = rpc::MakeClientContext(kTimeout);
      st = custodian->AddComponent(add_ctx.get(), add, &added);
      ASSERT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(added.component_kcv(), *crypto::KcvHex(crypto::CipherFamily::kAes, component));
    }
    rkl::v1::CompleteCeremonyRequest complete;
    complete.set_ceremony_id(ceremony.ceremony_id());
    rkl::v1::CompleteCeremonyResponse done;
    auto done_ctx = rpc::MakeClientContext(kTimeout);
    st = bob->CompleteCeremony(done_ctx.get(), complete, &done);
    ASSERT_TRUE(st.ok()) << st.error_message();
    // Both sides agree on the combined key without it ever travelling.
    ASSERT_EQ(done.kcv(), *crypto::KcvHex(crypto::CipherFamily::kAes, combined));
    out.index = done.key_index();
    out.key = std::move(combined);
  }

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    a_ = MakeReplica();
    b_ = MakeReplica();
  }

  std::unique_ptr<KmsReplica> MakeReplica(int lockout_threshold = 100) {
    return std::make_unique<KmsReplica>(
        database().runtime_dsn(), HsmChannel("kms"),
        [this] {
          absl::MutexLock lock(&clock_mu_);
          return now_;
        },
        KmsCoreOptions{.pk_index = pk_.index,
                       .mak_index = mak_.index,
                       .lockout_threshold = lockout_threshold});
  }

  void Advance(absl::Duration d) {
    absl::MutexLock lock(&clock_mu_);
    now_ += d;
  }

  absl::Status Submit(KmsCore& core, const TestTerminal& t) {
    auto ctk = t.MakeCtkPk(pk_.key, mak_.key);
    if (!ctk.ok()) return ctk.status();
    return core.SubmitTransportKey("mtms", t.sn(), *ctk, "receipt-" + t.sn()).status();
  }

  struct Opened {
    std::string session_id;
    Bytes crnd2;
    Bytes crnd1;
  };
  absl::StatusOr<Opened> Open(KmsCore& core, TestTerminal& t) {
    Bytes rnd1 = t.NewRnd1();
    auto begun = core.BeginAuthentication(t.sn(), rnd1);
    if (!begun.ok()) return begun.status();
    auto crnd2 = t.AnswerChallenge(begun->crnd1, begun->rnd2);
    if (!crnd2.ok()) return crnd2.status();
    return Opened{begun->session_id, *crnd2, begun->crnd1};
  }

  // Begin on `first`, complete and confirm on `second`.
  absl::Status Flow(KmsCore& first, KmsCore& second, TestTerminal& t) {
    auto opened = Open(first, t);
    if (!opened.ok()) return opened.status();
    auto delivered = second.CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
    if (!delivered.ok()) return delivered.status();
    absl::Status accepted = t.AcceptKeyBlock(delivered->key_block, delivered->tmk_kcv);
    if (!accepted.ok()) return accepted;
    auto proof = t.InstallProof();
    if (!proof.ok()) return proof.status();
    auto state = second.ConfirmInstallation(opened->session_id, t.sn(), *proof);
    if (!state.ok()) return state.status();
    return *state == TerminalState::kInstalled ? absl::OkStatus()
                                               : absl::InternalError("not installed");
  }

  static rkl::testing::TestPki* pki_;
  static std::map<std::string, rpc::TlsFiles>* tls_;
  static rkl::testing::TestDatabase* hsm_db_;
  static hsm::HsmDaemon* daemon_;
  static Result pk_;
  static Result mak_;

  std::unique_ptr<KmsReplica> a_;
  std::unique_ptr<KmsReplica> b_;
  absl::Mutex clock_mu_;
  absl::Time now_ = absl::Now();
};

rkl::testing::TestPki* KmsIntegrationTest::pki_ = nullptr;
std::map<std::string, rpc::TlsFiles>* KmsIntegrationTest::tls_ =
    new std::map<std::string, rpc::TlsFiles>();
rkl::testing::TestDatabase* KmsIntegrationTest::hsm_db_ = nullptr;
hsm::HsmDaemon* KmsIntegrationTest::daemon_ = nullptr;
KmsIntegrationTest::Result KmsIntegrationTest::pk_;
KmsIntegrationTest::Result KmsIntegrationTest::mak_;

TEST_F(KmsIntegrationTest, TestTerminalCompletesTheFlowForEveryAlgorithm) {
  for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(a)));
    TestTerminal t("REAL-" + std::string(crypto::KeyAlgorithmName(a)), a);
    ASSERT_TRUE(Submit(a_->core, t).ok());
    absl::Status s = Flow(a_->core, a_->core, t);
    ASSERT_TRUE(s.ok()) << s;
    auto info = a_->core.GetTerminal(t.sn());
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->state, TerminalState::kInstalled);
    EXPECT_EQ(info->tmk_kcv, t.tmk_kcv());
    EXPECT_EQ(info->tmk_generation, 1u);
  }
}

TEST_F(KmsIntegrationTest, TamperedCtkPkIsUnauthenticatedAndChangesNothing) {
  TestTerminal t("REAL-TAMPER", KeyAlgorithm::kAes128);
  auto ctk = t.MakeCtkPk(pk_.key, mak_.key);
  ASSERT_TRUE(ctk.ok());
  (*ctk)[ctk->size() - 20] ^= 0x01;
  ASSERT_TRUE(a_->core.SubmitTransportKey("mtms", t.sn(), *ctk, "r").ok());
  auto before = a_->core.GetTerminal(t.sn());
  ASSERT_TRUE(before.ok());
  auto begun = a_->core.BeginAuthentication(t.sn(), t.NewRnd1());
  EXPECT_EQ(begun.status().code(), absl::StatusCode::kUnauthenticated) << begun.status();
  auto after = a_->core.GetTerminal(t.sn());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->version, before->version);
  EXPECT_FALSE(after->auk_index.has_value());
  EXPECT_EQ(after->consecutive_failures, 0u);
  EXPECT_EQ(Sql("SELECT count(*) FROM auth_sessions")[0][0].as<int>(), 0);
}

TEST_F(KmsIntegrationTest, WrongReflectedReusedExpiredAndCrossSnTokensAreRefused) {
  TestTerminal t("REAL-NEG", KeyAlgorithm::kAes128);
  TestTerminal other("REAL-NEG-B", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(a_->core, t).ok());
  ASSERT_TRUE(Submit(a_->core, other).ok());

  auto wrong = Open(a_->core, t);
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  wrong->crnd2[0] ^= 1;
  EXPECT_EQ(
      a_->core.CompleteAuthentication(wrong->session_id, t.sn(), wrong->crnd2).status().code(),
      absl::StatusCode::kUnauthenticated);
  Advance(absl::Seconds(1));  // the back-off after one failure

  auto reflected = Open(a_->core, t);
  ASSERT_TRUE(reflected.ok());
  EXPECT_EQ(a_->core.CompleteAuthentication(reflected->session_id, t.sn(), reflected->crnd1)
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
  Advance(absl::Seconds(2));  // and after two

  auto cross = Open(a_->core, t);
  ASSERT_TRUE(cross.ok());
  EXPECT_EQ(
      a_->core.CompleteAuthentication(cross->session_id, other.sn(), cross->crnd2).status().code(),
      absl::StatusCode::kNotFound);

  auto expired = Open(a_->core, t);
  ASSERT_TRUE(expired.ok());
  Advance(absl::Seconds(61));
  EXPECT_EQ(
      a_->core.CompleteAuthentication(expired->session_id, t.sn(), expired->crnd2).status().code(),
      absl::StatusCode::kFailedPrecondition);

  // The cross-SN attempt did not spend the session... but it has expired meanwhile; a fresh
  // one succeeds once and only once.
  auto good = Open(a_->core, t);
  ASSERT_TRUE(good.ok());
  auto delivered = a_->core.CompleteAuthentication(good->session_id, t.sn(), good->crnd2);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_TRUE(t.AcceptKeyBlock(delivered->key_block, delivered->tmk_kcv).ok());
  EXPECT_EQ(a_->core.CompleteAuthentication(good->session_id, t.sn(), good->crnd2).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a_->core.GetTerminal(t.sn())->consecutive_failures, 0u);  // reset by success
}

TEST_F(KmsIntegrationTest, FailuresBackOffAcrossReplicasLockAtTheThresholdAndUnlockRestores) {
  a_ = MakeReplica(/*lockout_threshold=*/5);
  b_ = MakeReplica(/*lockout_threshold=*/5);
  TestTerminal t("REAL-LOCK", KeyAlgorithm::kTdes2);
  ASSERT_TRUE(Submit(a_->core, t).ok());
  for (int i = 0; i < 5; ++i) {
    auto opened = Open(i % 2 ? a_->core : b_->core, t);
    ASSERT_TRUE(opened.ok()) << opened.status();
    opened->crnd2.back() ^= 1;
    absl::Status failed =
        a_->core.CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status();
    EXPECT_EQ(failed.code(), absl::StatusCode::kUnauthenticated);
    if (i == 4) break;
    // The back-off is the SN's, whichever replica is asked next.
    ASSERT_EQ(RetryDelay(failed), absl::Seconds(1) * (1 << i));
    auto early = Open(b_->core, t);
    ASSERT_TRUE(early.ok());
    EXPECT_EQ(
        b_->core.CompleteAuthentication(early->session_id, t.sn(), early->crnd2).status().code(),
        absl::StatusCode::kResourceExhausted);
    Advance(*RetryDelay(failed));
  }
  EXPECT_EQ(a_->core.GetTerminal(t.sn())->state, TerminalState::kLocked);
  EXPECT_EQ(Open(b_->core, t).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(b_->core.UnlockTerminal(kAlice, t.sn(), "test").ok());
  absl::Status s = Flow(a_->core, b_->core, t);
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(KmsIntegrationTest, BegunOnOneReplicaCompletedOnTheOther) {
  TestTerminal t("REAL-REPLICAS", KeyAlgorithm::kAes256);
  ASSERT_TRUE(Submit(b_->core, t).ok());
  absl::Status s = Flow(a_->core, b_->core, t);
  ASSERT_TRUE(s.ok()) << s;
}

TEST_F(KmsIntegrationTest, RekeyDeliversANewTmkFromTheHsm) {
  TestTerminal t("REAL-REKEY", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(a_->core, t).ok());
  ASSERT_TRUE(Flow(a_->core, a_->core, t).ok());
  auto first = t.TmkFingerprint();
  ASSERT_TRUE(b_->core.MarkForRekey(kAlice, t.sn(), "rotation").ok());
  t.RegenerateTransportKey();
  ASSERT_TRUE(Submit(a_->core, t).ok());
  absl::Status s = Flow(b_->core, a_->core, t);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_NE(*first, *t.TmkFingerprint());
  EXPECT_EQ(a_->core.GetTerminal(t.sn())->tmk_generation, 2u);
}

TEST_F(KmsIntegrationTest, ThousandTerminalsGetThousandDistinctTmks) {
  constexpr int kTerminals = 1000;
  constexpr int kThreads = 8;
  std::vector<std::unique_ptr<TestTerminal>> terminals;
  for (int i = 0; i < kTerminals; ++i) {
    char sn[32];
    std::snprintf(sn, sizeof sn, "REAL-FLEET-%04d", i);
    terminals.push_back(std::make_unique<TestTerminal>(sn, KeyAlgorithm::kAes128));
  }
  std::vector<absl::Status> results(kTerminals);
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      for (int i = w; i < kTerminals; i += kThreads) {
        KmsCore& first = i % 2 ? a_->core : b_->core;
        KmsCore& second = i % 2 ? b_->core : a_->core;
        absl::Status s = Submit(first, *terminals[i]);
        results[i] = s.ok() ? Flow(first, second, *terminals[i]) : s;
      }
    });
  }
  for (auto& w : workers) w.join();
  for (int i = 0; i < kTerminals; ++i) ASSERT_TRUE(results[i].ok()) << i << ": " << results[i];

  std::set<Bytes> fingerprints;
  for (const auto& t : terminals) fingerprints.insert(*t->TmkFingerprint());
  EXPECT_EQ(fingerprints.size(), static_cast<size_t>(kTerminals));
  pqxx::row counts =
      Sql("SELECT count(*), count(DISTINCT tmk_index), count(*) FILTER (WHERE state = 'INSTALLED')"
          " FROM terminals")[0];
  EXPECT_EQ(counts[0].as<int>(), kTerminals);
  EXPECT_EQ(counts[1].as<int>(), kTerminals);
  EXPECT_EQ(counts[2].as<int>(), kTerminals);
}

}  // namespace
}  // namespace rkl::kms::testing
