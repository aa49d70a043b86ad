// TkWaiters over a real PostgreSQL: the statements by which a terminal's transport key
// arrives (a first TK, a supersede, the new TK of a re-key) signal the tickets of that SN
// at commit, other writes (an import) and other SNs do not; the cap on tickets and Close().
// Whether a ticket was NOT signalled is read only after a later notification (of another
// SN) has arrived: one listener connection delivers notifications in commit order.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <pqxx/nontransaction>
#include <string>
#include <vector>

#include "fake_hsm.h"
#include "kms_core.h"
#include "kms_db_roles.h"
#include "kms_pg_repository.h"
#include "rkl/crypto/random.h"
#include "rkl/kms/migrations.h"
#include "rkl/testing/service_database.h"
#include "rkl/testing/wait.h"
#include "test_terminal.h"
#include "tk_waiters.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using WaitResult = TkWaitPort::WaitResult;

// A ticket's state now, without waiting: its deadline is already past.
WaitResult Peek(TkWaitPort::Ticket& ticket) { return ticket.Wait(absl::InfinitePast()); }

// Waits (for an event, with rkl::testing's far deadline) until the ticket is signalled.
bool Signalled(TkWaitPort::Ticket& ticket) {
  return ticket.Wait(absl::Now() + rkl::testing::kEventDeadline) == WaitResult::kSignalled;
}

class TkWaitersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = rkl::testing::ServiceDatabase::Create(
        {.migrations = Migrations(), .grants = kKmsRuntimeGrants});
    ASSERT_TRUE(db.ok()) << db.status();
    db_.emplace(*std::move(db));
    repo_ = std::make_unique<PgKmsRepository>(db_->pool(), crypto::SecretBytes(32));
    hsm_ = std::make_unique<FakeHsm>(keys_);
    core_ = std::make_unique<KmsCore>(
        *repo_, *hsm_, rkl::SystemClock(), crypto::FillRandom,
        KmsCoreOptions{.pk_index = FakeHsm::kPkIndex, .mak_index = FakeHsm::kMakIndex});
    listener_ = std::make_unique<db::Listener>(
        db::ListenerOptions{.dsn = db_->runtime_dsn(), .channel = kTkArrivalChannel});
    waiters_ = std::make_unique<TkWaiters>(*listener_, 3);
    listener_->Start();
    ASSERT_TRUE(rkl::testing::WaitUntil([&] { return listener_->listening(); }));
  }
  void TearDown() override {
    if (listener_ != nullptr) listener_->Stop();
  }

  absl::Status Submit(const TestTerminal& t) {
    absl::StatusOr<Bytes> ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    if (!ctk.ok()) return ctk.status();
    return core_->SubmitTransportKey("mtms", t.sn(), *ctk, "sub").status();
  }

  // A committed notification of a throwaway SN, heard: everything committed before it
  // has been heard too.
  void Barrier() {
    TestTerminal marker("POS-BARRIER-" + std::to_string(++barriers_), KeyAlgorithm::kAes128);
    std::unique_ptr<TkWaitPort::Ticket> ticket = waiters_->Register(marker.sn());
    ASSERT_NE(ticket, nullptr);
    ASSERT_TRUE(Submit(marker).ok());
    ASSERT_TRUE(Signalled(*ticket));
  }

  TransportKeys keys_ = TransportKeys::Generate();
  std::optional<rkl::testing::ServiceDatabase> db_;
  std::unique_ptr<PgKmsRepository> repo_;
  std::unique_ptr<FakeHsm> hsm_;
  std::unique_ptr<KmsCore> core_;
  std::unique_ptr<db::Listener> listener_;
  std::unique_ptr<TkWaiters> waiters_;
  int barriers_ = 0;
};

TEST_F(TkWaitersTest, AFirstTkSignalsItsSnOnly) {
  TestTerminal a("POS-TKW-A", KeyAlgorithm::kAes128);
  std::unique_ptr<TkWaitPort::Ticket> for_a = waiters_->Register(a.sn());
  std::unique_ptr<TkWaitPort::Ticket> for_b = waiters_->Register("POS-TKW-B");
  ASSERT_NE(for_a, nullptr);
  ASSERT_NE(for_b, nullptr);
  EXPECT_EQ(Peek(*for_a), WaitResult::kDeadline);
  ASSERT_TRUE(Submit(a).ok());
  EXPECT_TRUE(Signalled(*for_a));
  EXPECT_EQ(Peek(*for_a), WaitResult::kDeadline);  // a signal is taken once
  for_a.reset();
  Barrier();
  EXPECT_EQ(Peek(*for_b), WaitResult::kDeadline);
}

TEST_F(TkWaitersTest, ABatchSignalsEverySnItStoresAndNoOther) {
  TestTerminal a("POS-TKW-BATCH-A", KeyAlgorithm::kAes128);
  TestTerminal b("POS-TKW-BATCH-B", KeyAlgorithm::kAes256);
  std::unique_ptr<TkWaitPort::Ticket> for_a = waiters_->Register(a.sn());
  std::unique_ptr<TkWaitPort::Ticket> for_b = waiters_->Register(b.sn());
  std::unique_ptr<TkWaitPort::Ticket> for_c = waiters_->Register("POS-TKW-BATCH-C");
  ASSERT_NE(for_a, nullptr);
  ASSERT_NE(for_b, nullptr);
  ASSERT_NE(for_c, nullptr);
  std::vector<TkSubmission> items;
  for (const TestTerminal* t : {&a, &b}) {
    absl::StatusOr<Bytes> ctk = t->MakeCtkPk(keys_.pk, keys_.mak);
    ASSERT_TRUE(ctk.ok());
    items.push_back({.sn = t->sn(), .ctk_pk = *ctk, .mtms_submission_id = "sub", .request_id = ""});
  }
  auto results = core_->SubmitTransportKeys("mtms", items);
  ASSERT_TRUE(results.ok()) << results.status();
  for (const auto& r : *results) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(Signalled(*for_a));
  EXPECT_TRUE(Signalled(*for_b));
  for_a.reset();
  for_b.reset();
  Barrier();
  EXPECT_EQ(Peek(*for_c), WaitResult::kDeadline);
}

TEST_F(TkWaitersTest, ASupersedeAndARekeysNewTkSignalAnImportDoesNot) {
  TestTerminal t("POS-TKW-NEW", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  Barrier();  // the first TK's own notification is heard before the ticket is registered
  std::unique_ptr<TkWaitPort::Ticket> ticket = waiters_->Register(t.sn());
  ASSERT_NE(ticket, nullptr);
  Barrier();
  EXPECT_EQ(Peek(*ticket), WaitResult::kDeadline);

  // The first Begin imports TEK/AUK: a write of the TK row, but no TK arrives.
  Bytes rnd1 = t.NewRnd1();
  absl::StatusOr<BeginResult> begun = core_->BeginAuthentication(t.sn(), rnd1);
  ASSERT_TRUE(begun.ok()) << begun.status();
  Barrier();
  EXPECT_EQ(Peek(*ticket), WaitResult::kDeadline);

  // A newer package supersedes the TK.
  t.RegenerateTransportKey();
  ASSERT_TRUE(Submit(t).ok());
  EXPECT_TRUE(Signalled(*ticket));

  // Installed, then an admin's re-key mark: no TK; the new TK after it is one.
  rnd1 = t.NewRnd1();
  begun = core_->BeginAuthentication(t.sn(), rnd1);
  ASSERT_TRUE(begun.ok()) << begun.status();
  absl::StatusOr<Bytes> crnd2 = t.AnswerChallenge(begun->crnd1, begun->rnd2);
  ASSERT_TRUE(crnd2.ok());
  absl::StatusOr<DeliveryResult> delivered =
      core_->CompleteAuthentication(begun->session_id, t.sn(), *crnd2);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  ASSERT_TRUE(t.AcceptKeyBlock(delivered->key_block, delivered->tmk_kcv).ok());
  absl::StatusOr<Bytes> proof = t.InstallProof();
  ASSERT_TRUE(proof.ok());
  ASSERT_TRUE(core_->ConfirmInstallation(begun->session_id, t.sn(), *proof).ok());
  ASSERT_TRUE(core_->MarkForRekey("admin:alice", t.sn(), "key change").ok());
  Barrier();
  EXPECT_EQ(Peek(*ticket), WaitResult::kDeadline);
  t.RegenerateTransportKey();
  ASSERT_TRUE(Submit(t).ok());
  EXPECT_TRUE(Signalled(*ticket));
}

TEST_F(TkWaitersTest, TicketsAreCappedAndCloseWakesThem) {
  std::unique_ptr<TkWaitPort::Ticket> a = waiters_->Register("POS-TKW-1");
  std::unique_ptr<TkWaitPort::Ticket> b = waiters_->Register("POS-TKW-2");
  std::unique_ptr<TkWaitPort::Ticket> c = waiters_->Register("POS-TKW-3");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(waiters_->tickets(), 3u);
  EXPECT_EQ(waiters_->Register("POS-TKW-4"), nullptr);  // over the cap
  c.reset();
  std::unique_ptr<TkWaitPort::Ticket> d = waiters_->Register("POS-TKW-4");
  EXPECT_NE(d, nullptr);  // a slot given back is used again
  waiters_->Close();
  EXPECT_EQ(a->Wait(absl::InfiniteFuture()), WaitResult::kClosed);
  EXPECT_EQ(waiters_->Register("POS-TKW-5"), nullptr);
}

TEST_F(TkWaitersTest, ListeningAgainWakesEveryTicket) {
  std::unique_ptr<TkWaitPort::Ticket> ticket = waiters_->Register("POS-TKW-RESET");
  ASSERT_NE(ticket, nullptr);
  // The server ends the listener's backend (a restart, a failover would).
  const std::string name = db_->Sql("SELECT current_database()")[0][0].as<std::string>();
  pqxx::connection admin(db_->admin_dsn());
  pqxx::result ended = pqxx::nontransaction(admin).exec_params(
      "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
      "WHERE datname = $1 AND query LIKE 'LISTEN %'",
      name);
  ASSERT_EQ(ended.size(), 1u);
  // A TK committed while the listener was away is not lost: the ticket is told to re-read.
  EXPECT_TRUE(Signalled(*ticket));
  EXPECT_EQ(listener_->listens(), 2u);
}

}  // namespace
}  // namespace rkl::kms::testing
