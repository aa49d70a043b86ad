// BeginAuthentication's wait for a transport key (docs/kms.md "Authentication and delivery"), in
// the KmsCore conformance suite: over a scripted TkWaitPort whose tickets run the test's script on
// each wait (the TK arrives, the injected clock reaches the deadline, the port closes), so no case
// depends on timing.

#include <gmock/gmock.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kms_core_suite.h"
#include "tk_wait_port.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;

// Tickets up to `capacity`; each Wait runs `on_wait` (which may submit the TK or move the
// clock first) and reports what it returns.
class ScriptedTkWaits final : public TkWaitPort {
 public:
  using OnWait = std::function<WaitResult(const std::string& sn, absl::Time deadline)>;

  explicit ScriptedTkWaits(size_t capacity) : capacity_(capacity) {}

  std::unique_ptr<Ticket> Register(const std::string& sn) override {
    ++registered;
    if (live >= capacity_) return nullptr;
    ++live;
    return std::make_unique<ScriptedTicket>(this, sn);
  }

  OnWait on_wait;
  std::vector<absl::Time> deadlines;  // of every Wait
  int registered = 0;
  size_t live = 0;

 private:
  class ScriptedTicket final : public Ticket {
   public:
    ScriptedTicket(ScriptedTkWaits* owner, std::string sn) : owner_(owner), sn_(std::move(sn)) {}
    ~ScriptedTicket() override { --owner_->live; }
    WaitResult Wait(absl::Time deadline) override {
      owner_->deadlines.push_back(deadline);
      return owner_->on_wait(sn_, deadline);
    }

   private:
    ScriptedTkWaits* owner_;
    std::string sn_;
  };

  const size_t capacity_;
};

TEST_P(KmsCoreSuite, TkWaitAnswersOnceTheTkArrives) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get(), .metrics = KmsMetrics::Register(metrics_)});
  TestTerminal t("POS-WAIT-OK", KeyAlgorithm::kAes128);
  waits->on_wait = [&](const std::string& sn, absl::Time) {
    EXPECT_EQ(sn, t.sn());
    EXPECT_EQ(Counted("rkl_kms_tk_waiters"), 1);  // waiting now
    EXPECT_TRUE(Submit(t).ok());                  // MTMS forwards meanwhile
    return TkWaitPort::WaitResult::kSignalled;
  };
  Bytes rnd1 = t.NewRnd1();
  absl::StatusOr<BeginResult> begun =
      core_->BeginAuthentication(t.sn(), rnd1, "", absl::Seconds(10));
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_TRUE(t.AnswerChallenge(begun->crnd1, begun->rnd2).ok());
  EXPECT_EQ(waits->deadlines.size(), 1u);
  EXPECT_EQ(waits->live, 0u);  // the ticket is given back
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "arrived"}}), 1);
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "deadline"}}), 0);
  EXPECT_EQ(Counted("rkl_kms_tk_waiters"), 0);
  // Nothing refused: the SN was unknown only while the call waited.
  EXPECT_EQ(core_->unknown_sn_begins(), 0u);
  absl::StatusOr<int64_t> flushed = core_->FlushRefusalCounts();
  ASSERT_TRUE(flushed.ok());
  EXPECT_EQ(*flushed, 0);
}

TEST_P(KmsCoreSuite, TkWaitThatRunsOutAnswersNotFoundAtTheInjectedDeadline) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get(), .metrics = KmsMetrics::Register(metrics_)});
  const absl::Time start = now_;
  int woken = 0;
  waits->on_wait = [&](const std::string&, absl::Time deadline) {
    // First a wake for nothing (another replica's reconnect, a lost signal): the core
    // reads again and waits on; then the clock reaches the deadline.
    if (++woken == 1) return TkWaitPort::WaitResult::kSignalled;
    Advance(deadline - now_);
    return TkWaitPort::WaitResult::kDeadline;
  };
  absl::StatusOr<BeginResult> begun =
      core_->BeginAuthentication("POS-WAIT-NEVER", Bytes(16, 1), "", absl::Seconds(3));
  EXPECT_EQ(begun.status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(waits->deadlines.size(), 2u);
  EXPECT_EQ(waits->deadlines[0], start + absl::Seconds(3));
  EXPECT_EQ(waits->deadlines[1], start + absl::Seconds(3));
  EXPECT_EQ(now_, start + absl::Seconds(3));
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "deadline"}}), 1);
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "arrived"}}), 0);
  EXPECT_EQ(Counted("rkl_kms_tk_waiters"), 0);
  // Refused once, however often it woke.
  EXPECT_EQ(core_->unknown_sn_begins(), 1u);
  absl::StatusOr<int64_t> flushed = core_->FlushRefusalCounts();
  ASSERT_TRUE(flushed.ok());
  EXPECT_EQ(*flushed, 1);
}

TEST_P(KmsCoreSuite, TkWaitIsCappedAtTkWaitMax) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_wait_max = absl::Seconds(2), .tk_waits = waits.get()});
  const absl::Time start = now_;
  waits->on_wait = [&](const std::string&, absl::Time deadline) {
    Advance(deadline - now_);
    return TkWaitPort::WaitResult::kDeadline;
  };
  EXPECT_EQ(
      core_->BeginAuthentication("POS-WAIT-CAP", Bytes(16, 1), "", absl::Hours(1)).status().code(),
      absl::StatusCode::kNotFound);
  ASSERT_EQ(waits->deadlines.size(), 1u);
  EXPECT_EQ(waits->deadlines[0], start + absl::Seconds(2));
}

TEST_P(KmsCoreSuite, TkWaitEndsBeforeTheCallsDeadline) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get()});
  const absl::Time start = now_;
  waits->on_wait = [&](const std::string&, absl::Time deadline) {
    Advance(deadline - now_);
    return TkWaitPort::WaitResult::kDeadline;
  };
  EXPECT_EQ(core_
                ->BeginAuthentication("POS-WAIT-DL", Bytes(16, 1), "", absl::Seconds(10),
                                      start + absl::Seconds(3))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  ASSERT_EQ(waits->deadlines.size(), 1u);
  EXPECT_EQ(waits->deadlines[0], start + absl::Seconds(3) - kTkWaitAnswerMargin);
  // A deadline too close to wait at all: answered after the one read.
  EXPECT_EQ(core_
                ->BeginAuthentication("POS-WAIT-DL", Bytes(16, 1), "", absl::Seconds(10),
                                      now_ + kTkWaitAnswerMargin)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(waits->deadlines.size(), 1u);
}

TEST_P(KmsCoreSuite, TkWaitOverCapacityAnswersAtOnce) {
  auto waits = std::make_unique<ScriptedTkWaits>(0);  // every ticket refused
  UseOptions({.tk_waits = waits.get(), .metrics = KmsMetrics::Register(metrics_)});
  waits->on_wait = [](const std::string&, absl::Time) {
    ADD_FAILURE() << "waited over capacity";
    return TkWaitPort::WaitResult::kDeadline;
  };
  const absl::Time start = now_;
  EXPECT_EQ(core_->BeginAuthentication("POS-WAIT-FULL", Bytes(16, 1), "", absl::Seconds(5))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(waits->registered, 1);
  EXPECT_TRUE(waits->deadlines.empty());
  EXPECT_EQ(now_, start);
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "over_capacity"}}), 1);
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "deadline"}}), 0);
  EXPECT_EQ(core_->unknown_sn_begins(), 1u);
}

TEST_P(KmsCoreSuite, TkWaitZeroOrAKnownTerminalDoesNotWait) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get(), .metrics = KmsMetrics::Register(metrics_)});
  waits->on_wait = [](const std::string&, absl::Time) {
    ADD_FAILURE() << "waited";
    return TkWaitPort::WaitResult::kDeadline;
  };
  // wait 0: as before, not even a ticket.
  EXPECT_EQ(core_->BeginAuthentication("POS-WAIT-ZERO", Bytes(16, 1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(waits->registered, 0);
  EXPECT_EQ(core_->unknown_sn_begins(), 1u);
  // A terminal KMS knows: answered after the one read.
  TestTerminal t("POS-WAIT-KNOWN", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  Bytes rnd1 = t.NewRnd1();
  EXPECT_TRUE(core_->BeginAuthentication(t.sn(), rnd1, "", absl::Seconds(5)).ok());
  EXPECT_TRUE(waits->deadlines.empty());
  EXPECT_EQ(waits->live, 0u);
  EXPECT_EQ(Counted("rkl_kms_tk_waits_total", {{"result", "arrived"}}), 0);
}

TEST_P(KmsCoreSuite, TkWaitEndsWhenThePortCloses) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get()});
  waits->on_wait = [](const std::string&, absl::Time) {
    return TkWaitPort::WaitResult::kClosed;  // shutting down
  };
  EXPECT_EQ(core_->BeginAuthentication("POS-WAIT-CLOSE", Bytes(16, 1), "", absl::Seconds(5))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(waits->deadlines.size(), 1u);
}

TEST_P(KmsCoreSuite, TkWaitCoversARekeyUntilTheNewTkArrives) {
  auto waits = std::make_unique<ScriptedTkWaits>(8);
  UseOptions({.tk_waits = waits.get()});
  TestTerminal t("POS-WAIT-REKEY", KeyAlgorithm::kAes128);
  Install(t);
  ASSERT_TRUE(core_->MarkForRekey("admin:alice", t.sn(), "key change").ok());
  t.RegenerateTransportKey();
  waits->on_wait = [&](const std::string&, absl::Time) {
    EXPECT_TRUE(Submit(t).ok());  // the new TK
    return TkWaitPort::WaitResult::kSignalled;
  };
  Bytes rnd1 = t.NewRnd1();
  absl::StatusOr<BeginResult> begun =
      core_->BeginAuthentication(t.sn(), rnd1, "", absl::Seconds(5));
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_TRUE(t.AnswerChallenge(begun->crnd1, begun->rnd2).ok());
  EXPECT_EQ(waits->deadlines.size(), 1u);
}

}  // namespace
}  // namespace rkl::kms::testing
