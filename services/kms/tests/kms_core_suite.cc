// The cases of the KmsCore conformance suite (kms_core_suite.h). Every rule in docs/kms.md
// has a test here that fails if the rule is broken.

#include "kms_core_suite.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <tuple>

#include "rkl/common/parallel.h"
#include "rkl/protocol/transport_key.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "admin:alice";

// ---- The flow --------------------------------------------------------------------------

TEST_P(KmsCoreSuite, SessionAndTerminalReadGivesWhatTheSeparateReadsGive) {
  // Completion and confirmation read both in one go; each half must be exactly the
  // separate read's answer, whichever side is missing.
  TestTerminal t("POS-READ", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  absl::StatusOr<Opened> opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const std::string unknown_id(32, '0');
  for (const auto& [id, sn] :
       std::vector<std::pair<std::string, std::string>>{{opened->session_id, t.sn()},
                                                        {opened->session_id, "POS-NONE"},
                                                        {unknown_id, t.sn()},
                                                        {unknown_id, "POS-NONE"}}) {
    SCOPED_TRACE(id + " " + sn);
    absl::StatusOr<KmsRepository::SessionAndTerminal> both = repo().GetSessionAndTerminal(id, sn);
    ASSERT_TRUE(both.ok()) << both.status();
    absl::StatusOr<AuthSession> session = repo().GetSession(id);
    absl::StatusOr<TerminalRecord> terminal = repo().GetTerminal(sn);
    EXPECT_EQ(both->session.status(), session.status());
    EXPECT_EQ(both->terminal.status(), terminal.status());
    if (session.ok() && both->session.ok()) {
      EXPECT_EQ(both->session->id, session->id);
      EXPECT_EQ(both->session->sn, session->sn);
      EXPECT_EQ(both->session->auk_index, session->auk_index);
      EXPECT_EQ(both->session->rnd1, session->rnd1);
      EXPECT_EQ(both->session->rnd2, session->rnd2);
      EXPECT_EQ(both->session->state, session->state);
      EXPECT_EQ(both->session->tmk_kcv, session->tmk_kcv);
      EXPECT_EQ(both->session->created_at_ms, session->created_at_ms);
      EXPECT_EQ(both->session->expires_at_ms, session->expires_at_ms);
    }
    if (terminal.ok() && both->terminal.ok()) {
      EXPECT_EQ(both->terminal->sn, terminal->sn);
      EXPECT_EQ(both->terminal->state, terminal->state);
      EXPECT_EQ(both->terminal->algorithm, terminal->algorithm);
      EXPECT_EQ(both->terminal->ctk_pk, terminal->ctk_pk);
      EXPECT_EQ(both->terminal->tek_index, terminal->tek_index);
      EXPECT_EQ(both->terminal->auk_index, terminal->auk_index);
      EXPECT_EQ(both->terminal->auk_kcv, terminal->auk_kcv);
      EXPECT_EQ(both->terminal->tmk_index, terminal->tmk_index);
      EXPECT_EQ(both->terminal->version, terminal->version);
      EXPECT_EQ(both->terminal->updated_at_ms, terminal->updated_at_ms);
    }
  }
}

TEST_P(KmsCoreSuite, FullFlowForEveryAlgorithm) {
  for (KeyAlgorithm a : {KeyAlgorithm::kAes128, KeyAlgorithm::kAes256, KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(a)));
    TestTerminal t("POS-" + std::string(crypto::KeyAlgorithmName(a)), a);
    absl::StatusOr<SubmitResult> submitted = Submit(t);
    ASSERT_TRUE(submitted.ok()) << submitted.status();
    EXPECT_EQ(submitted->state, TerminalState::kTkReceived);
    EXPECT_FALSE(submitted->duplicate);

    std::string session = Deliver(t);
    ASSERT_TRUE(t.has_tmk());
    TerminalRecord after_delivery = Terminal(t.sn());
    EXPECT_EQ(after_delivery.state, TerminalState::kTmkDelivered);
    EXPECT_EQ(after_delivery.tmk_kcv, t.tmk_kcv());
    EXPECT_EQ(after_delivery.tmk_kcv, hsm_->LiveTmkKcv(t.sn()));
    EXPECT_EQ(after_delivery.tmk_generation, 1u);
    EXPECT_EQ(after_delivery.algorithm, a);
    EXPECT_EQ(after_delivery.tek_kcv.size(), 6u);

    absl::StatusOr<Bytes> proof = t.InstallProof();
    ASSERT_TRUE(proof.ok());
    absl::StatusOr<TerminalState> state = core_->ConfirmInstallation(session, t.sn(), *proof);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(*state, TerminalState::kInstalled);
    TerminalRecord installed = Terminal(t.sn());
    EXPECT_EQ(installed.state, TerminalState::kInstalled);
    EXPECT_EQ(installed.installed_at_ms, absl::ToUnixMillis(now_));
    EXPECT_EQ(installed.consecutive_failures, 0u);
    for (const char* action :
         {rkl::audit::action::kTkReceive, rkl::audit::action::kTkImport,
          rkl::audit::action::kAuthBegin, rkl::audit::action::kAuthOk,
          rkl::audit::action::kTmkDeliver, rkl::audit::action::kTerminalInstalled}) {
      EXPECT_EQ(CountAudit(t.sn(), action, "OK"), 1) << action;
    }
  }
}

TEST_P(KmsCoreSuite, TerminalRefusesAKmsThatCannotProveAuk) {
  TestTerminal t("POS-1", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  Bytes rnd1 = t.NewRnd1();
  auto begun = core_->BeginAuthentication(t.sn(), rnd1);
  ASSERT_TRUE(begun.ok()) << begun.status();
  Bytes forged = begun->crnd1;
  forged[3] ^= 0x80;
  EXPECT_EQ(t.AnswerChallenge(forged, begun->rnd2).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_P(KmsCoreSuite, NoKeyMaterialInAuditOrResults) {
  TestTerminal t("POS-LEAK", KeyAlgorithm::kAes128);
  Install(t);
  TestTerminal bad("POS-LEAK-2", KeyAlgorithm::kAes256);
  ASSERT_TRUE(Submit(bad).ok());
  (void)FailOnce(bad);
  std::vector<std::string> secrets = t.SecretHexForLeakChecks();
  for (const std::string& s : bad.SecretHexForLeakChecks()) secrets.push_back(s);
  ASSERT_EQ(secrets.size(), 5u);
  auto all = core_->ListAudit("", 1000, "");
  ASSERT_TRUE(all.ok());
  ASSERT_FALSE(all->records.empty());
  for (const AuditEntry& e : all->records) {
    for (const std::string& secret : secrets) {
      EXPECT_THAT(e.detail, Not(HasSubstr(secret)));
      // Half a key is still a leak.
      EXPECT_THAT(e.detail, Not(HasSubstr(secret.substr(0, secret.size() / 2))));
    }
  }
}

// ---- Intake ----------------------------------------------------------------------------

TEST_P(KmsCoreSuite, SameCtkPkAgainIsADuplicateAndChangesNothing) {
  TestTerminal t("POS-DUP", KeyAlgorithm::kAes128);
  auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(ctk.ok());
  ASSERT_TRUE(core_->SubmitTransportKey(kMtms, t.sn(), *ctk, "a").ok());
  TerminalRecord before = Terminal(t.sn());
  Advance(absl::Seconds(5));
  auto again = core_->SubmitTransportKey(kMtms, t.sn(), *ctk, "a");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->state, TerminalState::kTkReceived);
  TerminalRecord after = Terminal(t.sn());
  EXPECT_EQ(after.version, before.version);
  EXPECT_EQ(after.updated_at_ms, before.updated_at_ms);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkReceive, "OK"), 1);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSupersede, "OK"), 0);

  // Even once installed, an outbox retry of the same TK is answered, not refused.
  std::string session = Deliver(t);
  auto proof = t.InstallProof();
  ASSERT_TRUE(core_->ConfirmInstallation(session, t.sn(), *proof).ok());
  auto late = core_->SubmitTransportKey(kMtms, t.sn(), *ctk, "a");
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_TRUE(late->duplicate);
  EXPECT_EQ(late->state, TerminalState::kInstalled);
}

TEST_P(KmsCoreSuite, SameTkInANewerPackageIsADuplicateAndKeepsTheOpenSession) {
  // The operator terminal lost MTMS's receipt and sent the terminal's TK again: MTMS made
  // a second Ctk_pk (a later created_at, so other bytes) for the same TEK and AUK. The
  // session the terminal opened on the first one must survive it.
  TestTerminal t("POS-AGAIN", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  TerminalRecord before = Terminal(t.sn());
  auto later = t.MakeCtkPk(keys_.pk, keys_.mak, /*created_at_ms=*/1700000060000);
  ASSERT_TRUE(later.ok());
  ASSERT_NE(*later, before.ctk_pk);
  auto again = core_->SubmitTransportKey(kMtms, t.sn(), *later, "sub-again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate);
  TerminalRecord after = Terminal(t.sn());
  EXPECT_EQ(after.version, before.version);
  EXPECT_EQ(after.ctk_pk, before.ctk_pk);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSupersede, "OK"), 0);
  EXPECT_TRUE(core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).ok());

  // A different TK is still a new one: it supersedes.
  t.RegenerateTransportKey();
  auto other = Submit(t);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(other->duplicate);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSupersede, "OK"), 1);
}

TEST_P(KmsCoreSuite, AnOlderPackageIsRefusedAndChangesNothing) {
  // MTMS retried an older package (it waited in backoff) after a newer one for the same SN
  // was accepted: storing it would give KMS a TK the terminal no longer holds.
  TestTerminal older("POS-ORDER", KeyAlgorithm::kAes128);
  TestTerminal newer("POS-ORDER", KeyAlgorithm::kAes128);
  newer.RegenerateTransportKey();
  ASSERT_LT(older.tk_created_at_ms(), newer.tk_created_at_ms());
  ASSERT_TRUE(Submit(newer).ok());
  TerminalRecord before = Terminal(newer.sn());
  for (int64_t at : {older.tk_created_at_ms(), newer.tk_created_at_ms()}) {
    SCOPED_TRACE(at);
    auto ctk = older.MakeCtkPk(keys_.pk, keys_.mak, at);
    ASSERT_TRUE(ctk.ok());
    auto r = core_->SubmitTransportKey(kMtms, older.sn(), *ctk, "sub-older");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(r.status().message(), HasSubstr("ctk_pk: created_at"));
    EXPECT_THAT(r.status().message(),
                HasSubstr(at == newer.tk_created_at_ms() ? "equals" : "older"));
    TerminalRecord after = Terminal(newer.sn());
    EXPECT_EQ(after.version, before.version);
    EXPECT_EQ(after.ctk_pk, before.ctk_pk);
  }
  EXPECT_EQ(CountAudit(newer.sn(), rkl::audit::action::kTkSubmit, "FAILED_PRECONDITION"), 2);
  EXPECT_EQ(CountAudit(newer.sn(), rkl::audit::action::kTkSupersede, "OK"), 0);
  // The identical newer package again is still the duplicate an outbox retry needs, and the
  // terminal that holds the newer TK completes its flow.
  auto dup = Submit(newer);
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate);
  EXPECT_FALSE(Deliver(newer).empty());
  EXPECT_TRUE(newer.has_tmk());
}

TEST_P(KmsCoreSuite, ANewerPackageSupersedesAnOlderOne) {
  TestTerminal t("POS-NEWER", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  t.RegenerateTransportKey();
  auto r = Submit(t);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->duplicate);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSupersede, "OK"), 1);
  auto stored = protocol::ParseCtkPk(Terminal(t.sn()).ctk_pk);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->header.created_at_unix_ms, t.tk_created_at_ms());
}

TEST_P(KmsCoreSuite, IntakeValidatesSnAndCtkPkLayout) {
  TestTerminal t("POS-VAL", KeyAlgorithm::kAes128);
  auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(ctk.ok());
  auto bad_sn = core_->SubmitTransportKey(kMtms, "pos-val", *ctk, "");
  EXPECT_EQ(bad_sn.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_sn.status().message(), HasSubstr("sn"));
  // The header names POS-VAL: submitted for another SN it is refused before storage.
  auto other = core_->SubmitTransportKey(kMtms, "POS-OTHER", *ctk, "");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(other.status().message(), HasSubstr("ctk_pk"));
  Bytes truncated(ctk->begin(), ctk->end() - 1);
  EXPECT_EQ(core_->SubmitTransportKey(kMtms, t.sn(), truncated, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  Bytes garbage(100, 0x42);
  EXPECT_EQ(core_->SubmitTransportKey(kMtms, t.sn(), garbage, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  Bytes huge(600, 0);
  EXPECT_EQ(core_->SubmitTransportKey(kMtms, t.sn(), huge, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->SubmitTransportKey(kMtms, t.sn(), *ctk, "has space").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->GetTerminal(t.sn()).status().code(), absl::StatusCode::kNotFound);
}

// ---- Intake in batches (SubmitTransportKeys) -------------------------------------------

TEST_P(KmsCoreSuite, ABatchStoresEachNewSnAsTheSingleCallWould) {
  std::vector<TestTerminal> terminals;
  terminals.emplace_back("POS-BATCH-A", KeyAlgorithm::kAes128);
  terminals.emplace_back("POS-BATCH-B", KeyAlgorithm::kAes256);
  terminals.emplace_back("POS-BATCH-C", KeyAlgorithm::kTdes2);
  std::vector<TkSubmission> items;
  for (const TestTerminal& t : terminals) {
    absl::StatusOr<Bytes> ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    ASSERT_TRUE(ctk.ok());
    items.push_back({.sn = t.sn(),
                     .ctk_pk = *ctk,
                     .mtms_submission_id = "sub-" + t.sn(),
                     .request_id = "rid-" + t.sn()});
  }
  auto results = core_->SubmitTransportKeys(kMtms, items);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    SCOPED_TRACE(items[i].sn);
    ASSERT_TRUE((*results)[i].ok()) << (*results)[i].status();
    EXPECT_EQ((*results)[i]->state, TerminalState::kTkReceived);
    EXPECT_FALSE((*results)[i]->duplicate);
    TerminalRecord stored = Terminal(items[i].sn);
    EXPECT_EQ(stored.state, TerminalState::kTkReceived);
    EXPECT_EQ(stored.algorithm, terminals[i].algorithm());
    EXPECT_EQ(stored.ctk_pk, items[i].ctk_pk);
    EXPECT_EQ(stored.mtms_submission_id, items[i].mtms_submission_id);
    EXPECT_EQ(stored.tk_received_at_ms, absl::ToUnixMillis(now_));
    EXPECT_EQ(stored.created_at_ms, absl::ToUnixMillis(now_));
    EXPECT_EQ(stored.version, 1);
    EXPECT_FALSE(stored.tek_index.has_value());
    EXPECT_FALSE(stored.tmk_index.has_value());
    EXPECT_EQ(CountAudit(items[i].sn, rkl::audit::action::kTkReceive, "OK"), 1);
    // Under its own flow's request id, not the batch's.
    for (const AuditEntry& e : AuditOf(items[i].sn)) {
      if (e.action == rkl::audit::action::kTkReceive) {
        EXPECT_EQ(e.request_id, "rid-" + items[i].sn);
      }
    }
  }
  // What was stored is what a terminal authenticates against.
  for (TestTerminal& t : terminals) {
    Deliver(t);
    EXPECT_TRUE(t.has_tmk()) << t.sn();
  }
}

TEST_P(KmsCoreSuite, ABatchAnswersEachItemAsTheSingleCallWould) {
  TestTerminal fresh("POS-BATCH-NEW", KeyAlgorithm::kAes128);
  TestTerminal known("POS-BATCH-KNOWN", KeyAlgorithm::kAes128);
  TestTerminal pending("POS-BATCH-PENDING", KeyAlgorithm::kAes128);
  TestTerminal installed("POS-BATCH-INSTALLED", KeyAlgorithm::kAes128);
  absl::StatusOr<Bytes> known_ctk = known.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(known_ctk.ok());
  ASSERT_TRUE(core_->SubmitTransportKey(kMtms, known.sn(), *known_ctk, "k").ok());
  ASSERT_TRUE(Submit(pending).ok());
  Install(installed);
  const TerminalRecord installed_before = Terminal(installed.sn());
  Advance(absl::Seconds(2));
  pending.RegenerateTransportKey();
  installed.RegenerateTransportKey();
  absl::StatusOr<Bytes> fresh_ctk = fresh.MakeCtkPk(keys_.pk, keys_.mak);
  absl::StatusOr<Bytes> pending_ctk = pending.MakeCtkPk(keys_.pk, keys_.mak);
  absl::StatusOr<Bytes> installed_ctk = installed.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(fresh_ctk.ok() && pending_ctk.ok() && installed_ctk.ok());

  const std::vector<TkSubmission> items = {
      {.sn = fresh.sn(), .ctk_pk = *fresh_ctk, .mtms_submission_id = "s1", .request_id = ""},
      {.sn = "pos-lower", .ctk_pk = *fresh_ctk, .mtms_submission_id = "s2", .request_id = ""},
      {.sn = known.sn(), .ctk_pk = *known_ctk, .mtms_submission_id = "k", .request_id = ""},
      {.sn = installed.sn(),
       .ctk_pk = *installed_ctk,
       .mtms_submission_id = "s4",
       .request_id = ""},
      {.sn = pending.sn(), .ctk_pk = *pending_ctk, .mtms_submission_id = "s5", .request_id = ""},
      {.sn = fresh.sn(),
       .ctk_pk = *fresh_ctk,
       .mtms_submission_id = "s6",
       .request_id = ""},  // named again
      {.sn = "POS-OTHER",
       .ctk_pk = *fresh_ctk,
       .mtms_submission_id = "s7",
       .request_id = ""},  // header: fresh
      {.sn = fresh.sn(), .ctk_pk = *fresh_ctk, .mtms_submission_id = "has space", .request_id = ""},
  };
  auto results = core_->SubmitTransportKeys(kMtms, items);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), items.size());
  const std::vector<absl::StatusOr<SubmitResult>>& r = *results;
  ASSERT_TRUE(r[0].ok()) << r[0].status();
  EXPECT_FALSE(r[0]->duplicate);
  EXPECT_EQ(r[1].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r[1].status().message(), HasSubstr("sn"));
  ASSERT_TRUE(r[2].ok()) << r[2].status();
  EXPECT_TRUE(r[2]->duplicate);
  EXPECT_EQ(r[3].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r[3].status().message(), HasSubstr("re-key"));
  ASSERT_TRUE(r[4].ok()) << r[4].status();
  EXPECT_FALSE(r[4]->duplicate);
  EXPECT_EQ(r[4]->state, TerminalState::kTkReceived);
  ASSERT_TRUE(r[5].ok()) << r[5].status();
  EXPECT_TRUE(r[5]->duplicate);
  EXPECT_EQ(r[6].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r[6].status().message(), HasSubstr("ctk_pk"));
  EXPECT_EQ(r[7].status().code(), absl::StatusCode::kInvalidArgument);

  // Each item changed exactly what its single call would have.
  EXPECT_EQ(Terminal(fresh.sn()).mtms_submission_id, "s1");
  EXPECT_EQ(CountAudit(fresh.sn(), rkl::audit::action::kTkReceive, "OK"), 1);
  EXPECT_EQ(CountAudit(known.sn(), rkl::audit::action::kTkReceive, "OK"), 1);
  EXPECT_EQ(Terminal(known.sn()).version, 1);
  EXPECT_EQ(Terminal(pending.sn()).ctk_pk, *pending_ctk);
  EXPECT_EQ(CountAudit(pending.sn(), rkl::audit::action::kTkSupersede, "OK"), 1);
  EXPECT_EQ(Terminal(installed.sn()).version, installed_before.version);
  EXPECT_EQ(Terminal(installed.sn()).ctk_pk, installed_before.ctk_pk);
  EXPECT_EQ(CountAudit(installed.sn(), rkl::audit::action::kTkSubmit, "FAILED_PRECONDITION"), 1);
  EXPECT_EQ(core_->GetTerminal("POS-OTHER").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(KmsCoreSuite, ABatchOfNoItemsOrTooManyIsRefusedWhole) {
  EXPECT_EQ(core_->SubmitTransportKeys(kMtms, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<TkSubmission> items;
  for (size_t i = 0; i <= kMaxSubmitBatch; ++i) {
    TestTerminal t("POS-MANY-" + std::to_string(i), KeyAlgorithm::kAes128);
    absl::StatusOr<Bytes> ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
    ASSERT_TRUE(ctk.ok());
    items.push_back({.sn = t.sn(), .ctk_pk = *ctk, .mtms_submission_id = "m", .request_id = ""});
  }
  auto refused = core_->SubmitTransportKeys(kMtms, items);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("items"));
  EXPECT_EQ(core_->GetTerminal("POS-MANY-0").status().code(), absl::StatusCode::kNotFound);
  items.pop_back();  // kMaxSubmitBatch: accepted
  auto accepted = core_->SubmitTransportKeys(kMtms, items);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  for (const auto& r : *accepted) EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Terminal("POS-MANY-63").state, TerminalState::kTkReceived);
}

TEST_P(KmsCoreSuite, NewTkSupersedesAPendingOneAndCancelsItsSessions) {
  TestTerminal t("POS-SUP", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);  // imports the first TK
  ASSERT_TRUE(opened.ok()) << opened.status();
  TerminalRecord first = Terminal(t.sn());
  ASSERT_TRUE(first.auk_index.has_value());

  t.RegenerateTransportKey();
  auto superseded = Submit(t);
  ASSERT_TRUE(superseded.ok()) << superseded.status();
  EXPECT_FALSE(superseded->duplicate);
  EXPECT_EQ(superseded->state, TerminalState::kTkReceived);
  TerminalRecord second = Terminal(t.sn());
  EXPECT_FALSE(second.auk_index.has_value());  // old TEK/AUK forgotten
  EXPECT_NE(second.ctk_pk, first.ctk_pk);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSupersede, "OK"), 1);

  // The session of the old TK is dead.
  auto stale = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  // The new TK works end to end.
  Deliver(t);
  EXPECT_TRUE(t.has_tmk());
  EXPECT_NE(Terminal(t.sn()).auk_index, first.auk_index);
}

TEST_P(KmsCoreSuite, NewTkAfterDeliveryGetsANewTmk) {
  TestTerminal t("POS-SUP2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  Deliver(t);
  auto first = t.TmkFingerprint();
  ASSERT_TRUE(first.ok());
  // The TMK went out under the old TEK: it must not be delivered again under a new one.
  t.RegenerateTransportKey();
  ASSERT_TRUE(Submit(t).ok());
  Deliver(t);
  auto second = t.TmkFingerprint();
  ASSERT_TRUE(second.ok());
  EXPECT_NE(*first, *second);
  EXPECT_EQ(Terminal(t.sn()).tmk_generation, 2u);
}

TEST_P(KmsCoreSuite, NewTkForAnInstalledTerminalNeedsAnAdminRekey) {
  TestTerminal t("POS-REKEY", KeyAlgorithm::kAes128);
  Install(t);
  auto first_tmk = t.TmkFingerprint();
  ASSERT_TRUE(first_tmk.ok());
  TerminalRecord installed = Terminal(t.sn());

  t.RegenerateTransportKey();
  auto refused = Submit(t);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("re-key"));
  EXPECT_EQ(Terminal(t.sn()).version, installed.version);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkSubmit, "FAILED_PRECONDITION"), 1);

  auto marked = core_->MarkForRekey(kAlice, t.sn(), "annual key change");
  ASSERT_TRUE(marked.ok()) << marked.status();
  EXPECT_EQ(marked->state, TerminalState::kRekeyPending);
  EXPECT_TRUE(marked->rekey_requested);
  // Nothing to authenticate with until the new TK arrives.
  EXPECT_EQ(Open(t).status().code(), absl::StatusCode::kFailedPrecondition);

  auto accepted = Submit(t);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->state, TerminalState::kTkReceived);
  EXPECT_TRUE(Terminal(t.sn()).rekey_requested);
  std::string session = Deliver(t);
  auto second_tmk = t.TmkFingerprint();
  ASSERT_TRUE(second_tmk.ok());
  EXPECT_NE(*first_tmk, *second_tmk);
  auto proof = t.InstallProof();
  ASSERT_TRUE(core_->ConfirmInstallation(session, t.sn(), *proof).ok());
  TerminalRecord rekeyed = Terminal(t.sn());
  EXPECT_EQ(rekeyed.state, TerminalState::kInstalled);
  EXPECT_EQ(rekeyed.tmk_generation, 2u);
  EXPECT_FALSE(rekeyed.rekey_requested);
  EXPECT_NE(rekeyed.tmk_index, installed.tmk_index);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalRekey, "OK"), 1);
}

TEST_P(KmsCoreSuite, RevokedTerminalRefusesIntakeAndAuthentication) {
  TestTerminal t("POS-REV", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok());
  auto revoked = core_->RevokeTerminal(kAlice, t.sn(), "stolen");
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->state, TerminalState::kRevoked);
  EXPECT_EQ(
      core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Open(t).status().code(), absl::StatusCode::kFailedPrecondition);
  t.RegenerateTransportKey();
  EXPECT_EQ(Submit(t).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->RevokeTerminal(kAlice, t.sn(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->UnlockTerminal(kAlice, t.sn(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_P(KmsCoreSuite, ChangeWhileWaitingOnTheHsmIsNotOverwritten) {
  // KMS decides on the terminal it read before calling HSM #2; an admin revokes the
  // terminal meanwhile. The versioned update must refuse the stale record, re-read, and
  // see the revocation — never write AUTHENTICATED over REVOKED.
  TestTerminal t("POS-RACE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  hsm_->OnNextCall("AuthenticateAndDeliver",
                   [&] { ASSERT_TRUE(core_->RevokeTerminal(kAlice, t.sn(), "stolen").ok()); });
  EXPECT_EQ(
      core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRevoked);
  // Whatever HSM #2 produced in that command is discarded: no TMK is recorded for, or
  // delivered to, the revoked terminal.
  EXPECT_FALSE(Terminal(t.sn()).tmk_index.has_value());
  EXPECT_TRUE(Terminal(t.sn()).tmk_kcv.empty());
  // And HSM #2 no longer holds it, nor any other key of the terminal.
  EXPECT_EQ(hsm_->UndestroyedKeys(t.sn()), 0);
}

// ---- Revocation reaches HSM #2 ------------------------------------------------------------

TEST_P(KmsCoreSuite, RevocationDestroysTheTerminalsKeysInHsm2) {
  TestTerminal t("POS-REVOKE-KEYS", KeyAlgorithm::kAes128);
  ASSERT_NO_FATAL_FAILURE(Install(t));
  ASSERT_GT(hsm_->UndestroyedKeys(t.sn()), 0);
  auto revoked = core_->RevokeTerminal(kAlice, t.sn(), "stolen");
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->state, TerminalState::kRevoked);
  EXPECT_EQ(hsm_->calls("DestroyTerminalKeys"), 1);
  EXPECT_EQ(hsm_->UndestroyedKeys(t.sn()), 0);
  EXPECT_EQ(hsm_->LiveTmkKcv(t.sn()), "");
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalRevoke, "OK"), 1);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalKeysDestroy, "OK"), 1);
  // A repeat finds nothing left to destroy: already revoked, as before.
  EXPECT_EQ(core_->RevokeTerminal(kAlice, t.sn(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_P(KmsCoreSuite, RevocationWhoseHsmStepFailedIsCompletedByRepeatingIt) {
  TestTerminal t("POS-REVOKE-RETRY", KeyAlgorithm::kAes128);
  ASSERT_NO_FATAL_FAILURE(Install(t));
  hsm_->FailNextCalls(1);
  auto revoked = core_->RevokeTerminal(kAlice, t.sn(), "stolen");
  EXPECT_EQ(revoked.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(revoked.status().message(), HasSubstr("repeat the revocation"));
  // Revoked at KMS all the same: nothing more is delivered.
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRevoked);
  EXPECT_GT(hsm_->UndestroyedKeys(t.sn()), 0);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalKeysDestroy, "UNAVAILABLE"), 1);
  auto again = core_->RevokeTerminal(kAlice, t.sn(), "stolen");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(hsm_->UndestroyedKeys(t.sn()), 0);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalKeysDestroy, "OK"), 1);
}

TEST_P(KmsCoreSuite, TmkMadeWhileTheTerminalWasRevokedIsDestroyed) {
  // The revocation's HSM step ran before HSM #2 made the TMK (here: it could not reach
  // HSM #2 at all); the delivery's update then finds the terminal REVOKED and has the
  // just-made TMK destroyed — it never leaves KMS either.
  TestTerminal t("POS-REVOKE-RACE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  hsm_->OnNextCall("AuthenticateAndDeliver", [&] {
    hsm_->FailNextCalls(1);
    EXPECT_EQ(core_->RevokeTerminal(kAlice, t.sn(), "stolen").status().code(),
              absl::StatusCode::kUnavailable);
  });
  auto delivered = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  EXPECT_EQ(delivered.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRevoked);
  EXPECT_FALSE(Terminal(t.sn()).tmk_index.has_value());
  EXPECT_EQ(hsm_->UndestroyedKeys(t.sn()), 0);
  EXPECT_EQ(hsm_->LiveTmkKcv(t.sn()), "");
  int by_kms = 0;
  for (const AuditEntry& e : AuditOf(t.sn())) {
    by_kms += e.action == rkl::audit::action::kTerminalKeysDestroy && e.actor == "kms" &&
              e.result == "OK";
  }
  EXPECT_EQ(by_kms, 1);
}

TEST_P(KmsCoreSuite, ChangeWhileImportingIsNotOverwritten) {
  TestTerminal t("POS-RACE2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  hsm_->OnNextCall("ImportAndChallenge",
                   [&] { ASSERT_TRUE(core_->RevokeTerminal(kAlice, t.sn(), "stolen").ok()); });
  // The import's write starts from the record read before the HSM call; it must not put
  // the terminal back to TK_RECEIVED. (A session opened in this window is refused at
  // completion.)
  auto opened = Open(t);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRevoked);
  if (opened.ok()) {
    EXPECT_EQ(
        core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status().code(),
        absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRevoked);
}

// ---- Authentication: negative paths -----------------------------------------------------

TEST_P(KmsCoreSuite, TamperedCtkPkIsUnauthenticatedAndChangesNothing) {
  TestTerminal t("POS-TAMPER", KeyAlgorithm::kAes128);
  auto ctk = t.MakeCtkPk(keys_.pk, keys_.mak);
  ASSERT_TRUE(ctk.ok());
  Bytes tampered = *ctk;
  tampered[tampered.size() - 20] ^= 0x01;  // inside W: the layout still parses
  ASSERT_TRUE(core_->SubmitTransportKey(kMtms, t.sn(), tampered, "x").ok());
  TerminalRecord before = Terminal(t.sn());

  Bytes rnd1 = t.NewRnd1();
  auto begun = core_->BeginAuthentication(t.sn(), rnd1);
  EXPECT_EQ(begun.status().code(), absl::StatusCode::kUnauthenticated) << begun.status();
  EXPECT_THAT(begun.status().message(), Not(HasSubstr("MAC")));

  TerminalRecord after = Terminal(t.sn());
  EXPECT_EQ(after.version, before.version);
  EXPECT_EQ(after.state, TerminalState::kTkReceived);
  EXPECT_FALSE(after.auk_index.has_value());
  EXPECT_EQ(after.consecutive_failures, 0u);
  EXPECT_EQ(hsm_->calls("AuthChallenge"), 0);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTkImport, "UNAUTHENTICATED"), 1);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kAuthBegin, "OK"), 0);  // no session was opened
}

TEST_P(KmsCoreSuite, WrongCrnd2IsUnauthenticatedAndCounts) {
  TestTerminal t("POS-WRONG", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok());
  Bytes wrong = opened->crnd2;
  wrong.back() ^= 0x01;
  auto r = core_->CompleteAuthentication(opened->session_id, t.sn(), wrong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 1u);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kAuthFail, "UNAUTHENTICATED"), 1);
  // One completion attempt per session: even the right answer is now too late.
  auto retry = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  EXPECT_EQ(retry.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(retry.status().message(), HasSubstr("already used"));
}

TEST_P(KmsCoreSuite, Crnd1ReflectedBackAsCrnd2IsRejected) {
  TestTerminal t("POS-REFL", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  // The patent's bare form would accept this: KMS's own answer sent back to it.
  Bytes rnd1 = t.NewRnd1();
  auto begun = core_->BeginAuthentication(t.sn(), rnd1);
  ASSERT_TRUE(begun.ok());
  auto r = core_->CompleteAuthentication(begun->session_id, t.sn(), begun->crnd1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(KmsCoreSuite, ParallelSessionReflectionIsRejected) {
  TestTerminal t("POS-REFL2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  // The attacker holds no AUK. Session A: Rnd1 = X, KMS answers Rnd2 = Y. Session B:
  // Rnd1 = Y, hoping KMS computes the token A needs. Directions and nonce order differ,
  // so it does not.
  Bytes x = crypto::RandomBytes(16);
  auto a = core_->BeginAuthentication(t.sn(), x);
  ASSERT_TRUE(a.ok());
  auto b = core_->BeginAuthentication(t.sn(), a->rnd2);
  ASSERT_TRUE(b.ok());
  auto r = core_->CompleteAuthentication(a->session_id, t.sn(), b->crnd1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(KmsCoreSuite, SessionUsedTwiceIsRefused) {
  TestTerminal t("POS-TWICE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok());
  ASSERT_TRUE(core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).ok());
  auto again = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("already used"));
  EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver"), 1);  // the replay never reached the HSM
}

TEST_P(KmsCoreSuite, ExpiredSessionIsRefused) {
  TestTerminal t("POS-EXP", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok());
  Advance(absl::Seconds(60));
  auto late = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver"), 0);

  // One millisecond before the end it still works.
  auto fresh = Open(t);
  ASSERT_TRUE(fresh.ok());
  Advance(absl::Seconds(60) - absl::Milliseconds(1));
  EXPECT_TRUE(core_->CompleteAuthentication(fresh->session_id, t.sn(), fresh->crnd2).ok());
}

TEST_P(KmsCoreSuite, SessionOfOneSnCannotBeCompletedForAnother) {
  TestTerminal a("POS-A", KeyAlgorithm::kAes128);
  TestTerminal b("POS-B", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(a).ok());
  ASSERT_TRUE(Submit(b).ok());
  auto opened = Open(a);
  ASSERT_TRUE(opened.ok());
  auto cross = core_->CompleteAuthentication(opened->session_id, b.sn(), opened->crnd2);
  auto unknown = core_->CompleteAuthentication(std::string(32, 'a'), b.sn(), opened->crnd2);
  // Indistinguishable from an unknown session.
  EXPECT_EQ(cross.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cross.status(), unknown.status());
  EXPECT_EQ(Terminal(b.sn()).consecutive_failures, 0u);
  EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver"), 0);
  // And A's own session is still good.
  EXPECT_TRUE(core_->CompleteAuthentication(opened->session_id, a.sn(), opened->crnd2).ok());
}

TEST_P(KmsCoreSuite, FailuresUpToTheThresholdLockUntilAnAdminUnlocks) {
  UseOptions({.lockout_threshold = 5});
  TestTerminal t("POS-LOCK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  for (int i = 1; i <= 4; ++i) {
    EXPECT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived) << i;
  }
  auto pending = Open(t);  // opened before the lock: cancelled by it
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  TerminalRecord locked = Terminal(t.sn());
  EXPECT_EQ(locked.state, TerminalState::kLocked);
  EXPECT_EQ(locked.consecutive_failures, 5u);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalLock, "OK"), 1);

  auto begin = Open(t);
  EXPECT_EQ(begin.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(begin.status().message(), HasSubstr("locked"));
  EXPECT_EQ(
      core_->CompleteAuthentication(pending->session_id, t.sn(), pending->crnd2).status().code(),
      absl::StatusCode::kFailedPrecondition);
  // A new TK cannot be used to escape the lock either.
  TestTerminal replacement("POS-LOCK", KeyAlgorithm::kAes128);
  EXPECT_EQ(Submit(replacement).status().code(), absl::StatusCode::kFailedPrecondition);

  auto unlocked = core_->UnlockTerminal(kAlice, t.sn(), "customer called");
  ASSERT_TRUE(unlocked.ok()) << unlocked.status();
  EXPECT_EQ(unlocked->state, TerminalState::kTkReceived);
  EXPECT_EQ(unlocked->consecutive_failures, 0u);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalUnlock, "OK"), 1);
  Deliver(t);
  EXPECT_TRUE(t.has_tmk());
}

TEST_P(KmsCoreSuite, CountersMoveWithFailedProofsLockoutsAndDeliveries) {
  UseOptions({.lockout_threshold = 3, .metrics = KmsMetrics::Register(metrics_)});
  auto failures = [&] { return Counted("rkl_kms_auth_failures_total"); };
  auto lockouts = [&] { return Counted("rkl_kms_lockouts_total"); };
  auto patent = [&] { return Counted("rkl_kms_tmk_deliveries_total", {{"protocol", "patent"}}); };
  EXPECT_EQ(failures(), 0);
  EXPECT_EQ(lockouts(), 0);
  EXPECT_EQ(patent(), 0);
  EXPECT_EQ(Counted("rkl_kms_tmk_deliveries_total", {{"protocol", "tr34"}}), 0);

  // A delivery and its install: one TMK delivered, nothing failed.
  TestTerminal ok("POS-COUNT-OK", KeyAlgorithm::kAes128);
  ASSERT_NO_FATAL_FAILURE(Install(ok));
  EXPECT_EQ(patent(), 1);
  EXPECT_EQ(failures(), 0);

  // Wrong Crnd2 twice: two failures; the third locks the terminal.
  TestTerminal t("POS-COUNT-LOCK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(failures(), 2);
  EXPECT_EQ(lockouts(), 0);
  ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  ASSERT_EQ(Terminal(t.sn()).state, TerminalState::kLocked);
  EXPECT_EQ(failures(), 3);
  EXPECT_EQ(lockouts(), 1);
  // Locked: refused before any proof, so neither counter moves.
  EXPECT_EQ(FailOnce(t).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(failures(), 3);
  EXPECT_EQ(lockouts(), 1);

  // A wrong install proof is a failed proof too; its delivery counted before it.
  TestTerminal proof("POS-COUNT-PROOF", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(proof).ok());
  const std::string session = Deliver(proof);
  ASSERT_FALSE(session.empty());
  EXPECT_EQ(patent(), 2);
  absl::StatusOr<Bytes> wrong = proof.InstallProof();
  ASSERT_TRUE(wrong.ok());
  (*wrong)[0] ^= 0x01;
  EXPECT_EQ(core_->ConfirmInstallation(session, proof.sn(), *wrong).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(failures(), 4);
  EXPECT_EQ(lockouts(), 1);
  EXPECT_EQ(patent(), 2);
}

TEST_P(KmsCoreSuite, ASuccessEndsTheFailureStreak) {
  UseOptions({.lockout_threshold = 5});
  TestTerminal t("POS-STREAK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  for (int i = 0; i < 4; ++i) ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  Deliver(t);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 0u);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTmkDelivered);  // 4, not 8: not locked
}

TEST_P(KmsCoreSuite, LockoutThresholdIsConfigurable) {
  core_ = std::make_unique<KmsCore>(
      repo(), *hsm_, [this] { return now_; }, crypto::FillRandom,
      KmsCoreOptions{
          .pk_index = FakeHsm::kPkIndex, .mak_index = FakeHsm::kMakIndex, .lockout_threshold = 2});
  TestTerminal t("POS-THRESH", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  (void)FailOnce(t);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived);
  (void)FailOnce(t);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kLocked);
}

// Issue 21, finding 1: failed proofs back off per SN, exponentially and capped, and every
// refusal names the time until the next attempt; no refused attempt reaches HSM #2.
TEST_P(KmsCoreSuite, FailedProofsBackOffExponentiallyAndEveryRefusalSaysHowLong) {
  TestTerminal t("POS-BACKOFF", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  absl::Duration expected = absl::Seconds(1);
  for (int failure = 1; failure <= 12; ++failure) {
    SCOPED_TRACE(failure);
    auto opened = Open(t);
    ASSERT_TRUE(opened.ok()) << opened.status();
    Bytes wrong = opened->crnd2;
    wrong[0] ^= 0x01;
    absl::Status failed = core_->CompleteAuthentication(opened->session_id, t.sn(), wrong).status();
    ASSERT_EQ(failed.code(), absl::StatusCode::kUnauthenticated);
    ASSERT_EQ(RetryDelay(failed), expected);
    EXPECT_THAT(failed.message(),
                HasSubstr(absl::StrCat("next attempt allowed in ",
                                       absl::ToInt64Milliseconds(expected), " ms")));
    // Until then even the right answer is refused before HSM #2, and the session stays
    // usable (a refusal for time is not an attempt).
    const int hsm_calls = hsm_->calls("AuthenticateAndDeliver");
    Advance(expected - absl::Milliseconds(1));
    auto early_session = Open(t);
    ASSERT_TRUE(early_session.ok());
    absl::Status early =
        core_->CompleteAuthentication(early_session->session_id, t.sn(), wrong).status();
    ASSERT_EQ(early.code(), absl::StatusCode::kResourceExhausted) << early;
    EXPECT_EQ(RetryDelay(early), absl::Milliseconds(1));
    EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver"), hsm_calls);
    EXPECT_EQ(Terminal(t.sn()).consecutive_failures, static_cast<uint32_t>(failure));
    Advance(absl::Milliseconds(1));
    expected = std::min(expected * 2, absl::Minutes(10));  // 1 s doubling, capped at 10 min
  }
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived);  // 12 of 100: not locked
  // The right answer after the wait: delivered, and the streak and its back-off are over.
  Deliver(t);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 0u);
  auto next = Open(t);
  ASSERT_TRUE(next.ok());
  next->crnd2[0] ^= 0x01;
  EXPECT_EQ(
      RetryDelay(core_->CompleteAuthentication(next->session_id, t.sn(), next->crnd2).status()),
      absl::Seconds(1));
}

TEST_P(KmsCoreSuite, OnlyTheConfiguredLargeNumberOfFailuresLocksForGood) {
  TestTerminal t("POS-HUNDRED", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  for (int i = 1; i < 100; ++i) {
    ASSERT_EQ(FailOnce(t).code(), absl::StatusCode::kUnauthenticated) << i;
  }
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalLock, "OK"), 0);
  absl::Status last = FailOnce(t);
  EXPECT_EQ(last.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(last.message(), HasSubstr("now locked"));
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kLocked);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 100u);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalLock, "OK"), 1);
  EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver"), 100);
}

// Issue 21, finding 6: the failure limit holds under parallel sessions. Twenty sessions
// opened at once and completed at once with wrong tokens: with the back-off, one attempt
// reaches HSM #2 and the others are told to wait; without it, exactly the threshold do.
TEST_P(KmsCoreSuite, ParallelSessionsCannotSpendMoreAttemptsThanTheRule) {
  for (bool backoff : {true, false}) {
    SCOPED_TRACE(backoff);
    UseOptions({.lockout_threshold = 5,
                .backoff_base = backoff ? absl::Seconds(1) : absl::ZeroDuration()});
    TestTerminal t(backoff ? "POS-PAR-BACKOFF" : "POS-PAR-LIMIT", KeyAlgorithm::kAes128);
    ASSERT_TRUE(Submit(t).ok());
    std::vector<Opened> sessions;
    for (int i = 0; i < 20; ++i) {
      auto opened = Open(t);
      ASSERT_TRUE(opened.ok()) << opened.status();
      opened->crnd2[0] ^= 0x01;
      sessions.push_back(*opened);
    }
    const int hsm_before = hsm_->calls("AuthenticateAndDeliver");
    std::vector<absl::Status> results(sessions.size());
    ParallelFor(sessions.size(), 20, [&](size_t i) {
      results[i] =
          core_->CompleteAuthentication(sessions[i].session_id, t.sn(), sessions[i].crnd2).status();
    });
    int unauthenticated = 0;
    for (const absl::Status& s : results) {
      if (s.code() == absl::StatusCode::kUnauthenticated) ++unauthenticated;
    }
    const int allowed = backoff ? 1 : 5;
    EXPECT_EQ(unauthenticated, allowed);
    EXPECT_EQ(hsm_->calls("AuthenticateAndDeliver") - hsm_before, allowed);
    EXPECT_EQ(Terminal(t.sn()).consecutive_failures, static_cast<uint32_t>(allowed));
    EXPECT_EQ(Terminal(t.sn()).state,
              backoff ? TerminalState::kTkReceived : TerminalState::kLocked);
  }
}

// Issue 21, finding 6: a terminal revoked (or locked) while HSM #2 makes Begin's challenge
// gets no session: the state is re-checked in the same write as the session.
TEST_P(KmsCoreSuite, BeginOpensNoSessionForATerminalRevokedOrLockedMeanwhile) {
  for (bool revoke : {true, false}) {
    SCOPED_TRACE(revoke);
    TestTerminal t(revoke ? "POS-REVOKING" : "POS-LOCKING", KeyAlgorithm::kAes128);
    ASSERT_TRUE(Submit(t).ok());
    Deliver(t);  // imported: the next Begin calls AuthChallenge alone
    const int opened_before = CountAudit(t.sn(), rkl::audit::action::kAuthBegin, "OK");
    hsm_->OnNextCall("AuthChallenge", [&] {
      if (revoke) {
        ASSERT_TRUE(core_->RevokeTerminal(kAlice, t.sn(), "stolen").ok());
      } else {
        // What the threshold does, as another replica would: LOCKED.
        TerminalRecord cur = Terminal(t.sn());
        cur.state_before_lock = cur.state;
        cur.state = TerminalState::kLocked;
        ASSERT_TRUE(repo().UpdateTerminal(cur, true, {}).ok());
      }
    });
    Bytes rnd1 = t.NewRnd1();
    auto begun = core_->BeginAuthentication(t.sn(), rnd1);
    ASSERT_EQ(begun.status().code(), absl::StatusCode::kFailedPrecondition) << begun.status();
    EXPECT_THAT(begun.status().message(), HasSubstr(revoke ? "revoked" : "locked"));
    EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kAuthBegin, "OK"),
              opened_before);  // no session
  }
}

TEST_P(KmsCoreSuite, BeginValidatesItsInput) {
  TestTerminal t("POS-IN", KeyAlgorithm::kTdes2);
  EXPECT_EQ(core_->BeginAuthentication(t.sn(), Bytes(8, 1)).status().code(),
            absl::StatusCode::kNotFound);
  // Counted, not audited: a probe for an unknown SN must not cost a durable write.
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kAuthBegin, "NOT_FOUND"), 0);
  EXPECT_EQ(core_->unknown_sn_begins(), 1u);
  ASSERT_TRUE(Submit(t).ok());
  // A TDES terminal's nonce is one 8-byte block.
  auto wrong_len = core_->BeginAuthentication(t.sn(), Bytes(16, 1));
  EXPECT_EQ(wrong_len.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_len.status().message(), HasSubstr("rnd1"));
  EXPECT_EQ(core_->BeginAuthentication("bad sn", Bytes(8, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(hsm_->calls("ImportAndChallenge"), 0);
}

TEST_P(KmsCoreSuite, CompleteAndConfirmValidateTheirInput) {
  TestTerminal t("POS-IN2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(core_->CompleteAuthentication("XYZ", t.sn(), opened->crnd2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      core_->CompleteAuthentication(std::string(32, '0'), t.sn(), opened->crnd2).status().code(),
      absl::StatusCode::kNotFound);
  // Malformed Crnd2 is not an attempt: the session survives it.
  EXPECT_EQ(core_->CompleteAuthentication(opened->session_id, t.sn(), Bytes(7, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Confirming before authenticating is refused.
  EXPECT_EQ(core_->ConfirmInstallation(opened->session_id, t.sn(), Bytes(16, 0)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<DeliveryResult> delivered =
      core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(core_->ConfirmInstallation(opened->session_id, t.sn(), Bytes(5, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 0u);
  // A malformed proof is not an attempt either: the session still takes the right one.
  ASSERT_TRUE(t.AcceptKeyBlock(delivered->key_block, delivered->tmk_kcv).ok());
  absl::StatusOr<Bytes> proof = t.InstallProof();
  ASSERT_TRUE(proof.ok()) << proof.status();
  absl::StatusOr<TerminalState> installed =
      core_->ConfirmInstallation(opened->session_id, t.sn(), *proof);
  ASSERT_TRUE(installed.ok()) << installed.status();
  EXPECT_EQ(*installed, TerminalState::kInstalled);
}

TEST_P(KmsCoreSuite, ClaimHappensOnlyWhenEverythingAboutTheSessionAllowsIt) {
  // The repository's one-statement claim, against each reason the core refuses a session
  // for: it must change nothing in each case, and claim exactly once otherwise.
  TestTerminal a("POS-CLAIM-A", KeyAlgorithm::kAes128);
  TestTerminal b("POS-CLAIM-B", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(a).ok());
  ASSERT_TRUE(Submit(b).ok());
  auto opened = Open(a);
  ASSERT_TRUE(opened.ok());
  const std::string& id = opened->session_id;
  auto state = [&] {
    absl::StatusOr<AuthSession> s = repo().GetSession(id);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->state : SessionState::kFailed;
  };
  absl::StatusOr<AuthSession> before = repo().GetSession(id);
  ASSERT_TRUE(before.ok());
  const int64_t now = absl::ToUnixMillis(now_);
  auto claim = [&](const std::string& sid, const std::string& sn, SessionState from, int64_t at) {
    return repo().ClaimSessionAndGetTerminal(sid, sn, from, SessionState::kVerifying, at);
  };
  for (const auto& [what, result] :
       std::vector<std::pair<std::string,
                             absl::StatusOr<std::optional<KmsRepository::SessionAndTerminal>>>>{
           {"another SN", claim(id, b.sn(), SessionState::kOpen, now)},
           {"unknown id", claim(std::string(32, 'e'), a.sn(), SessionState::kOpen, now)},
           {"unknown SN", claim(id, "POS-NONE", SessionState::kOpen, now)},
           {"other state", claim(id, a.sn(), SessionState::kAuthenticated, now)},
           {"expired", claim(id, a.sn(), SessionState::kOpen, before->expires_at_ms)}}) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->has_value());
    EXPECT_EQ(state(), SessionState::kOpen);
  }
  auto won = claim(id, a.sn(), SessionState::kOpen, before->expires_at_ms - 1);
  ASSERT_TRUE(won.ok()) << won.status();
  ASSERT_TRUE(won->has_value());
  EXPECT_EQ((*won)->session->id, id);
  EXPECT_EQ((*won)->session->rnd2, before->rnd2);
  EXPECT_EQ((*won)->session->state, SessionState::kOpen);  // as it was read
  EXPECT_EQ((*won)->terminal->sn, a.sn());
  EXPECT_EQ((*won)->terminal->version, Terminal(a.sn()).version);
  EXPECT_EQ(state(), SessionState::kVerifying);
  auto again = claim(id, a.sn(), SessionState::kOpen, now);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->has_value());
}

TEST_P(KmsCoreSuite, ClaimAndChargeHappenTogetherOrNotAtAll) {
  // The repository's one-statement claim and charge: the session is claimed and the attempt
  // charged only together; a session that cannot be claimed, a terminal that does not meet
  // the precondition and an attempt the rule refuses each change nothing.
  TestTerminal a("POS-CHARGE-A", KeyAlgorithm::kAes128);
  TestTerminal b("POS-CHARGE-B", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(a).ok());
  ASSERT_TRUE(Submit(b).ok());
  auto opened = Open(a);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const std::string& id = opened->session_id;
  auto state = [&](const std::string& sid) {
    absl::StatusOr<AuthSession> s = repo().GetSession(sid);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->state : SessionState::kFailed;
  };
  absl::StatusOr<AuthSession> session = repo().GetSession(id);
  ASSERT_TRUE(session.ok());
  const TerminalRecord before = Terminal(a.sn());
  const int64_t now = absl::ToUnixMillis(now_);
  const ProofAttemptPolicy policy{
      .now_ms = now, .backoff_base_ms = 1000, .backoff_max_ms = 600'000, .lock_after = 5};
  const ProofPrecondition pre{.states = {},
                              .session_auk = true,
                              .tek = true,
                              .session_tmk = false,
                              .algorithms = {KeyAlgorithm::kAes128}};
  auto claim = [&](const std::string& sid, const std::string& sn, SessionState from,
                   const ProofPrecondition& p, const ProofAttemptPolicy& rule) {
    return repo().ClaimSessionAndChargeAttempt(sid, sn, from, SessionState::kVerifying, p, rule);
  };
  auto unchanged = [&] {
    EXPECT_EQ(state(id), SessionState::kOpen);
    const TerminalRecord now_t = Terminal(a.sn());
    EXPECT_EQ(now_t.version, before.version);
    EXPECT_EQ(now_t.consecutive_failures, 0u);
  };
  ProofAttemptPolicy expired = policy;
  expired.now_ms = session->expires_at_ms;
  for (const auto& [what, result] : std::vector<
           std::pair<std::string, absl::StatusOr<std::optional<KmsRepository::ClaimedAttempt>>>>{
           {"another SN", claim(id, b.sn(), SessionState::kOpen, pre, policy)},
           {"unknown id", claim(std::string(32, 'e'), a.sn(), SessionState::kOpen, pre, policy)},
           {"unknown SN", claim(id, "POS-NONE", SessionState::kOpen, pre, policy)},
           {"other state", claim(id, a.sn(), SessionState::kAuthenticated, pre, policy)},
           {"expired", claim(id, a.sn(), SessionState::kOpen, pre, expired)}}) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->has_value());
    unchanged();
  }
  ProofPrecondition other_algorithm = pre;
  other_algorithm.algorithms = {KeyAlgorithm::kTdes2, KeyAlgorithm::kAes256};
  ProofPrecondition no_algorithm = pre;
  no_algorithm.algorithms = {};
  ProofPrecondition other_state = pre;
  other_state.states = {TerminalState::kTmkDelivered, TerminalState::kInstalled};
  ProofAttemptPolicy exhausted = policy;
  exhausted.lock_after = 0;
  for (const auto& [what, result] : std::vector<
           std::pair<std::string, absl::StatusOr<std::optional<KmsRepository::ClaimedAttempt>>>>{
           {"other algorithm", claim(id, a.sn(), SessionState::kOpen, other_algorithm, policy)},
           {"no algorithm", claim(id, a.sn(), SessionState::kOpen, no_algorithm, policy)},
           {"other state", claim(id, a.sn(), SessionState::kOpen, other_state, policy)},
           {"no attempts left", claim(id, a.sn(), SessionState::kOpen, pre, exhausted)}}) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE(result->has_value());
    EXPECT_FALSE((*result)->attempt.allowed);
    EXPECT_EQ((*result)->attempt.failures, 0u);
    EXPECT_EQ((*result)->attempt.version, before.version);
    EXPECT_EQ((*result)->session.id, id);
    EXPECT_EQ((*result)->terminal.sn, a.sn());
    EXPECT_EQ((*result)->terminal.version, before.version);
    unchanged();
  }

  auto won = claim(id, a.sn(), SessionState::kOpen, pre, policy);
  ASSERT_TRUE(won.ok()) << won.status();
  ASSERT_TRUE(won->has_value());
  EXPECT_TRUE((*won)->attempt.allowed);
  EXPECT_EQ((*won)->attempt.failures, 1u);
  EXPECT_EQ((*won)->attempt.retry_after_ms, now + 1000);
  EXPECT_EQ((*won)->attempt.version, before.version + 1);
  EXPECT_EQ((*won)->session.id, id);
  EXPECT_EQ((*won)->session.rnd2, session->rnd2);
  EXPECT_EQ((*won)->session.state, SessionState::kOpen);  // as it was read
  EXPECT_EQ((*won)->terminal.version, before.version);    // before the charge
  EXPECT_EQ((*won)->terminal.consecutive_failures, 0u);
  EXPECT_EQ(state(id), SessionState::kVerifying);
  EXPECT_EQ(Terminal(a.sn()).consecutive_failures, 1u);
  EXPECT_EQ(Terminal(a.sn()).version, before.version + 1);
  auto again = claim(id, a.sn(), SessionState::kOpen, pre, policy);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->has_value());
  EXPECT_EQ(Terminal(a.sn()).consecutive_failures, 1u);

  // Backing off: another session of the SN is answered with the wait and stays open.
  auto second = Open(a);
  ASSERT_TRUE(second.ok()) << second.status();
  const int64_t version = Terminal(a.sn()).version;
  auto waits = claim(second->session_id, a.sn(), SessionState::kOpen, pre, policy);
  ASSERT_TRUE(waits.ok()) << waits.status();
  ASSERT_TRUE(waits->has_value());
  EXPECT_FALSE((*waits)->attempt.allowed);
  EXPECT_EQ((*waits)->attempt.failures, 1u);
  EXPECT_EQ(state(second->session_id), SessionState::kOpen);
  EXPECT_EQ(Terminal(a.sn()).version, version);
  EXPECT_EQ(Terminal(a.sn()).consecutive_failures, 1u);

  // A locked terminal: no attempt, the session stays open.
  auto of_b = Open(b);
  ASSERT_TRUE(of_b.ok()) << of_b.status();
  TerminalRecord locked = Terminal(b.sn());
  locked.state_before_lock = locked.state;
  locked.state = TerminalState::kLocked;
  ASSERT_TRUE(repo().UpdateTerminal(locked, false, {}).ok());
  auto refused = claim(of_b->session_id, b.sn(), SessionState::kOpen, pre, policy);
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_TRUE(refused->has_value());
  EXPECT_FALSE((*refused)->attempt.allowed);
  EXPECT_EQ((*refused)->terminal.state, TerminalState::kLocked);
  EXPECT_EQ(state(of_b->session_id), SessionState::kOpen);
  EXPECT_EQ(Terminal(b.sn()).consecutive_failures, 0u);
}

TEST_P(KmsCoreSuite, ClaimAndChargeNeedsTheSessionsAukAndTmkWhenAsked) {
  // An install proof's precondition: the terminal still has the session's AUK and TMK.
  TestTerminal t("POS-CHARGE-TMK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  const std::string id = Deliver(t);
  ASSERT_FALSE(id.empty());
  const ProofAttemptPolicy policy{.now_ms = absl::ToUnixMillis(now_),
                                  .backoff_base_ms = 0,
                                  .backoff_max_ms = 0,
                                  .lock_after = 5};
  const ProofPrecondition pre{.states = {TerminalState::kTmkDelivered, TerminalState::kInstalled},
                              .session_auk = true,
                              .tek = false,
                              .session_tmk = true,
                              .algorithms = {KeyAlgorithm::kAes128}};
  auto claim = [&] {
    return repo().ClaimSessionAndChargeAttempt(id, t.sn(), SessionState::kAuthenticated,
                                               SessionState::kConfirming, pre, policy);
  };
  const TerminalRecord delivered = Terminal(t.sn());
  ASSERT_EQ(delivered.state, TerminalState::kTmkDelivered);
  TerminalRecord other_tmk = delivered;
  other_tmk.tmk_kcv = delivered.tmk_kcv == "000000" ? "111111" : "000000";
  TerminalRecord other_auk = delivered;
  other_auk.auk_index = *delivered.auk_index + 1;
  for (const auto& [what, changed] : std::vector<std::pair<std::string, TerminalRecord>>{
           {"other TMK", other_tmk}, {"other AUK", other_auk}}) {
    SCOPED_TRACE(what);
    TerminalRecord write = changed;
    write.version = Terminal(t.sn()).version;
    ASSERT_TRUE(repo().UpdateTerminal(write, false, {}).ok());
    const int64_t version = Terminal(t.sn()).version;
    auto refused = claim();
    ASSERT_TRUE(refused.ok()) << refused.status();
    ASSERT_TRUE(refused->has_value());
    EXPECT_FALSE((*refused)->attempt.allowed);
    EXPECT_EQ(repo().GetSession(id)->state, SessionState::kAuthenticated);
    EXPECT_EQ(Terminal(t.sn()).version, version);
    EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 0u);
    TerminalRecord back = delivered;
    back.version = version;
    ASSERT_TRUE(repo().UpdateTerminal(back, false, {}).ok());
  }
  auto won = claim();
  ASSERT_TRUE(won.ok()) << won.status();
  ASSERT_TRUE(won->has_value());
  EXPECT_TRUE((*won)->attempt.allowed);
  EXPECT_EQ(repo().GetSession(id)->state, SessionState::kConfirming);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 1u);
}

TEST_P(KmsCoreSuite, OfParallelClaimsOfOneSessionExactlyOneIsCharged) {
  // No back-off, so only the session's single use keeps the claims apart.
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    TestTerminal t("POS-CHARGE-RACE-" + std::to_string(round), KeyAlgorithm::kAes128);
    ASSERT_TRUE(Submit(t).ok());
    auto opened = Open(t);
    ASSERT_TRUE(opened.ok()) << opened.status();
    const ProofAttemptPolicy policy{.now_ms = absl::ToUnixMillis(now_),
                                    .backoff_base_ms = 0,
                                    .backoff_max_ms = 0,
                                    .lock_after = 100};
    const ProofPrecondition pre{.states = {},
                                .session_auk = true,
                                .tek = true,
                                .session_tmk = false,
                                .algorithms = {KeyAlgorithm::kAes128}};
    constexpr int kClaims = 8;
    std::vector<absl::StatusOr<std::optional<KmsRepository::ClaimedAttempt>>> results(kClaims,
                                                                                      std::nullopt);
    ParallelFor(kClaims, kClaims, [&](size_t i) {
      results[i] = repo().ClaimSessionAndChargeAttempt(
          opened->session_id, t.sn(), SessionState::kOpen, SessionState::kVerifying, pre, policy);
    });
    int charged = 0;
    for (const auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status();
      if (r->has_value() && (*r)->attempt.allowed) ++charged;
    }
    EXPECT_EQ(charged, 1);
    EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 1u);
    EXPECT_EQ(repo().GetSession(opened->session_id)->state, SessionState::kVerifying);
  }
}

TEST_P(KmsCoreSuite, WrongInstallProofCountsAndTheSameTmkCanBeFetchedAgain) {
  TestTerminal t("POS-PROOF", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  std::string session = Deliver(t);
  auto first = t.TmkFingerprint();
  ASSERT_TRUE(first.ok());
  auto proof = t.InstallProof();
  ASSERT_TRUE(proof.ok());
  Bytes wrong = *proof;
  wrong[0] ^= 0x01;
  auto r = core_->ConfirmInstallation(session, t.sn(), wrong);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTmkDelivered);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 1u);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kInstallFail, "UNAUTHENTICATED"), 1);
  // The session is spent; the right proof is too late for it.
  EXPECT_EQ(core_->ConfirmInstallation(session, t.sn(), *proof).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A wrong proof backs off like a wrong Crnd2.
  ASSERT_EQ(RetryDelay(r.status()), absl::Seconds(1));
  Advance(absl::Seconds(1));

  // A terminal that lost the delivery authenticates again and gets the same TMK.
  std::string again = Deliver(t);
  auto second = t.TmkFingerprint();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(Terminal(t.sn()).tmk_generation, 1u);
  auto good = t.InstallProof();
  ASSERT_TRUE(good.ok());
  auto installed = core_->ConfirmInstallation(again, t.sn(), *good);
  ASSERT_TRUE(installed.ok()) << installed.status();
  // Installed: the same confirmation again is answered (a lost reply), and the spent
  // session with the wrong proof stays spent.
  EXPECT_EQ(core_->ConfirmInstallation(again, t.sn(), *good).value_or(TerminalState::kLocked),
            TerminalState::kInstalled);
  EXPECT_EQ(core_->ConfirmInstallation(session, t.sn(), *proof).status().code(),
            absl::StatusCode::kFailedPrecondition);
}
TEST_P(KmsCoreSuite, ThePurgeDeletesSessionsExpiredLongerAgoThanTheRetentionAndNothingElse) {
  UseOptions({.session_retention = absl::Minutes(10)});
  TestTerminal t("POS-PURGE", KeyAlgorithm::kAes128);
  Install(t);  // one CONFIRMED session
  auto unanswered = Open(t);
  ASSERT_TRUE(unanswered.ok());
  const TerminalRecord installed = Terminal(t.sn());
  const size_t audit_rows = AuditOf(t.sn()).size();

  // Expired, but not yet for the retention: kept (a lost confirmation may still repeat).
  Advance(absl::Seconds(60) + absl::Minutes(10) - absl::Milliseconds(1));
  auto fresh = Open(t);  // expires a minute after the others' purge time
  ASSERT_TRUE(fresh.ok());
  absl::StatusOr<int64_t> purged = core_->PurgeExpiredSessions();
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 0);
  EXPECT_TRUE(repo().GetSession(unanswered->session_id).ok());

  Advance(absl::Milliseconds(2));
  purged = core_->PurgeExpiredSessions();
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 2);  // the confirmed and the unanswered one
  EXPECT_EQ(repo().GetSession(unanswered->session_id).status().code(), absl::StatusCode::kNotFound);
  // The live session, the terminal and the audit are untouched.
  ASSERT_TRUE(repo().GetSession(fresh->session_id).ok());
  EXPECT_EQ(Terminal(t.sn()).version, installed.version);
  EXPECT_EQ(AuditOf(t.sn()).size(), audit_rows + 1);  // + the fresh session's auth.begin
  EXPECT_TRUE(core_->CompleteAuthentication(fresh->session_id, t.sn(), fresh->crnd2).ok());
}

TEST_P(KmsCoreSuite, RefusalsBeforeAnyKeyOperationAreCountedNotAudited) {
  TestTerminal t("POS-JUNK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  const size_t audit_rows = AuditOf("").size();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(core_->BeginAuthentication(absl::StrCat("POS-NOBODY-", i), t.NewRnd1(), "10.0.0.7")
                  .status()
                  .code(),
              absl::StatusCode::kNotFound);
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(core_->BeginAuthentication(t.sn(), Bytes(3)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // Unknown sessions, whichever SN the caller names: counted under "*".
  for (const std::string& sn : {t.sn(), std::string("POS-NOBODY-9")}) {
    EXPECT_EQ(core_->CompleteAuthentication(std::string(32, 'a'), sn, Bytes(32)).status().code(),
              absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(AuditOf("").size(), audit_rows);  // nothing audited

  absl::StatusOr<int64_t> flushed = core_->FlushRefusalCounts();
  ASSERT_TRUE(flushed.ok()) << flushed.status();
  EXPECT_EQ(*flushed, 7);
  // The same refusals once more, in the same minute: the rows count up.
  EXPECT_FALSE(core_->BeginAuthentication("POS-NOBODY-0", t.NewRnd1(), "10.0.0.7").ok());
  ASSERT_TRUE(core_->FlushRefusalCounts().ok());
  absl::StatusOr<std::vector<RefusalCount>> rows = repo().ListRefusalCounts();
  ASSERT_TRUE(rows.ok()) << rows.status();
  // Keyed by SN, source address (given by the gRPC adapter; "*" when none), action and
  // reason.
  using Key = std::tuple<std::string, std::string, std::string, std::string>;
  std::map<Key, int64_t> counts;
  for (const RefusalCount& r : *rows) {
    EXPECT_EQ(r.interval_start_ms % 60'000, 0);
    EXPECT_LE(r.interval_start_ms, absl::ToUnixMillis(now_));
    counts[{r.sn, r.source, r.action, r.reason}] = r.count;
  }
  EXPECT_EQ(counts, (std::map<Key, int64_t>{
                        {{"*", "10.0.0.7", rkl::audit::action::kAuthBegin, "NOT_FOUND"}, 4},
                        {{"*", "*", rkl::audit::action::kAuthComplete, "NOT_FOUND"}, 2},
                        {{t.sn(), "*", rkl::audit::action::kAuthBegin, "INVALID_ARGUMENT"}, 2}}));

  // Purged after refusals.retention (24 h by default), not before.
  Advance(absl::Hours(23));
  ASSERT_THAT(core_->PurgeRefusalCounts(),
              ::testing::Truly([](const absl::StatusOr<int64_t>& n) { return n.ok() && *n == 0; }));
  Advance(absl::Hours(1) + absl::Minutes(1));
  absl::StatusOr<int64_t> purged = core_->PurgeRefusalCounts();
  ASSERT_TRUE(purged.ok()) << purged.status();
  EXPECT_EQ(*purged, 3);
  EXPECT_TRUE(repo().ListRefusalCounts()->empty());
}

TEST_P(KmsCoreSuite, RepeatedConfirmationAnswersInstalledAndChangesNothing) {
  // The reply to ConfirmInstallation was lost; the terminal sends the same call again.
  TestTerminal t("POS-CONFIRM2", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  std::string session = Deliver(t);
  auto proof = t.InstallProof();
  ASSERT_TRUE(proof.ok());
  ASSERT_TRUE(core_->ConfirmInstallation(session, t.sn(), *proof).ok());
  TerminalRecord installed = Terminal(t.sn());
  const int audit_rows = static_cast<int>(AuditOf(t.sn()).size());

  Advance(absl::Minutes(5));  // past the session's expiry: a repeat changes nothing anyway
  auto again = core_->ConfirmInstallation(session, t.sn(), *proof);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, TerminalState::kInstalled);
  // Its proof attempt was charged and, verified, given back: the terminal is as it was.
  TerminalRecord after = Terminal(t.sn());
  EXPECT_EQ(after.state, installed.state);
  EXPECT_EQ(after.consecutive_failures, installed.consecutive_failures);
  EXPECT_EQ(after.tmk_generation, installed.tmk_generation);
  EXPECT_EQ(after.installed_at_ms, installed.installed_at_ms);
  EXPECT_EQ(static_cast<int>(AuditOf(t.sn()).size()), audit_rows);
  EXPECT_EQ(hsm_->calls("VerifyInstallProof"), 2);  // the repeat is checked, not trusted

  // A wrong proof in the confirmed session is not an answer: it counts as a failure.
  Bytes wrong = *proof;
  wrong[0] ^= 0x01;
  auto bad = core_->ConfirmInstallation(session, t.sn(), wrong);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 1u);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kInstalled);
  // The confirmed session is still this terminal's only: another SN learns nothing.
  auto other = core_->ConfirmInstallation(session, "POS-OTHER", *proof);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
}

TEST_P(KmsCoreSuite, InstalledTerminalThatLostTheReplyConfirmsInAFreshSession) {
  // The terminal holds its TMK but never saw KMS accept the proof; its session is gone.
  // It authenticates again, gets the same TMK under its own TEK, and confirms it.
  TestTerminal t("POS-RESUME", KeyAlgorithm::kTdes2);
  ASSERT_TRUE(Submit(t).ok());
  std::string first = Deliver(t);
  auto proof = t.InstallProof();
  ASSERT_TRUE(core_->ConfirmInstallation(first, t.sn(), *proof).ok());
  const std::string kcv = t.tmk_kcv();
  auto fingerprint = t.TmkFingerprint();
  ASSERT_TRUE(fingerprint.ok());
  TerminalRecord installed = Terminal(t.sn());
  Advance(absl::Minutes(10));

  std::string second = Deliver(t);
  ASSERT_FALSE(second.empty());
  EXPECT_NE(second, first);
  EXPECT_EQ(t.tmk_kcv(), kcv);
  EXPECT_EQ(*t.TmkFingerprint(), *fingerprint);  // the same TMK, not a new one
  TerminalRecord delivered = Terminal(t.sn());
  EXPECT_EQ(delivered.state, TerminalState::kInstalled);
  EXPECT_EQ(delivered.tmk_generation, installed.tmk_generation);
  EXPECT_EQ(delivered.tmk_index, installed.tmk_index);
  auto proof2 = t.InstallProof();
  ASSERT_TRUE(proof2.ok());
  auto confirmed = core_->ConfirmInstallation(second, t.sn(), *proof2);
  ASSERT_TRUE(confirmed.ok()) << confirmed.status();
  EXPECT_EQ(*confirmed, TerminalState::kInstalled);
  TerminalRecord after = Terminal(t.sn());
  EXPECT_EQ(after.state, TerminalState::kInstalled);
  EXPECT_EQ(after.installed_at_ms, installed.installed_at_ms);
  EXPECT_EQ(after.tmk_kcv, kcv);
  EXPECT_EQ(hsm_->LiveTmkKcv(t.sn()), kcv);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalInstalled, "OK"), 1);  // installed once
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kInstallReconfirm, "OK"), 1);

  // The first session's proof does not confirm the second session, nor the other way round.
  auto crossed = core_->ConfirmInstallation(first, t.sn(), *proof2);
  EXPECT_EQ(crossed.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(KmsCoreSuite, ConfirmationOfASupersededTmkIsNotRepeated) {
  // A confirmed session whose TMK was replaced by a re-key proves nothing any more.
  TestTerminal t("POS-CONF-RK", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  std::string session = Deliver(t);
  auto proof = t.InstallProof();
  ASSERT_TRUE(core_->ConfirmInstallation(session, t.sn(), *proof).ok());
  ASSERT_TRUE(core_->MarkForRekey(kAlice, t.sn(), "ticket").ok());
  auto again = core_->ConfirmInstallation(session, t.sn(), *proof);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("no longer the terminal's"));
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kRekeyPending);
}

TEST_P(KmsCoreSuite, UnreachableHsmIsRetryableAndKeepsTheSession) {
  TestTerminal t("POS-HSMDOWN", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  hsm_->FailNextCalls(1);
  Bytes rnd1 = t.NewRnd1();
  EXPECT_EQ(core_->BeginAuthentication(t.sn(), rnd1).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_FALSE(Terminal(t.sn()).auk_index.has_value());
  auto opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  hsm_->FailNextCalls(1);
  EXPECT_EQ(
      core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).status().code(),
      absl::StatusCode::kUnavailable);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 0u);
  // UNAVAILABLE means "retry the same call": it succeeds.
  auto d = core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(t.AcceptKeyBlock(d->key_block, d->tmk_kcv).ok());
}

// ---- Administration ----------------------------------------------------------------------

TEST_P(KmsCoreSuite, AdminRulesAreEnforced) {
  EXPECT_EQ(core_->GetTerminal("POS-NONE").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->UnlockTerminal(kAlice, "POS-NONE", "").status().code(),
            absl::StatusCode::kNotFound);
  TestTerminal t("POS-ADM", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  EXPECT_EQ(core_->UnlockTerminal(kAlice, t.sn(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->MarkForRekey(kAlice, t.sn(), "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->RevokeTerminal(kAlice, t.sn(), std::string(257, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->RevokeTerminal(kAlice, t.sn(), "line\nbreak").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Terminal(t.sn()).state, TerminalState::kTkReceived);
  EXPECT_EQ(CountAudit(t.sn(), rkl::audit::action::kTerminalUnlock, "FAILED_PRECONDITION"), 1);
  auto revoked = core_->RevokeTerminal(kAlice, t.sn(), "decommissioned");
  ASSERT_TRUE(revoked.ok());
  bool found = false;
  for (const AuditEntry& e : AuditOf(t.sn())) {
    if (e.action == rkl::audit::action::kTerminalRevoke && e.result == "OK") {
      found = true;
      EXPECT_EQ(e.actor, kAlice);
      EXPECT_THAT(e.detail, HasSubstr("decommissioned"));
    }
  }
  EXPECT_TRUE(found);
}

TEST_P(KmsCoreSuite, ListTerminalsFiltersAndPages) {
  for (const char* sn : {"SHOP1-0001", "SHOP1-0002", "SHOP1-0003", "SHOP2-0001", "SHOP2-0002"}) {
    TestTerminal t(sn, KeyAlgorithm::kAes128);
    ASSERT_TRUE(Submit(t).ok());
  }
  ASSERT_TRUE(core_->RevokeTerminal(kAlice, "SHOP2-0001", "").ok());

  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = core_->ListTerminals(std::nullopt, "", 2, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& t : page->terminals) seen.push_back(t.sn);
    token = page->next_page_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"SHOP1-0001", "SHOP1-0002", "SHOP1-0003", "SHOP2-0001",
                                            "SHOP2-0002"}));

  auto shop1 = core_->ListTerminals(std::nullopt, "SHOP1", 0, "");
  ASSERT_TRUE(shop1.ok());
  EXPECT_EQ(shop1->terminals.size(), 3u);
  auto revoked = core_->ListTerminals(TerminalState::kRevoked, "", 0, "");
  ASSERT_TRUE(revoked.ok());
  ASSERT_EQ(revoked->terminals.size(), 1u);
  EXPECT_EQ(revoked->terminals[0].sn, "SHOP2-0001");

  EXPECT_EQ(core_->ListTerminals(std::nullopt, "", 1001, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ListTerminals(std::nullopt, "shop%", 0, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->ListTerminals(std::nullopt, "", 0, "not-a-token").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(KmsCoreSuite, StatisticsAndAuditPaging) {
  TestTerminal a("POS-ST1", KeyAlgorithm::kAes128);
  TestTerminal b("POS-ST2", KeyAlgorithm::kAes128);
  Install(a);
  ASSERT_TRUE(Submit(b).ok());
  (void)FailOnce(b);
  (void)FailOnce(b);
  auto st = core_->GetStatistics();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->terminals_total, 2u);
  EXPECT_EQ(st->distinct_tmk_kcvs, 1u);
  EXPECT_EQ(st->auth_failures_total, 2u);
  std::map<std::string, uint64_t> by_state(st->terminals_by_state.begin(),
                                           st->terminals_by_state.end());
  EXPECT_EQ(by_state["INSTALLED"], 1u);
  EXPECT_EQ(by_state["TK_RECEIVED"], 1u);

  std::vector<uint64_t> seqs;
  std::string token;
  do {
    auto page = core_->ListAudit("", 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& e : page->records) seqs.push_back(e.seq);
    token = page->next_page_token;
  } while (!token.empty());
  auto all = core_->ListAudit("", 1000, "");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(seqs.size(), all->records.size());
  EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end()));
  EXPECT_EQ(std::set<uint64_t>(seqs.begin(), seqs.end()).size(), seqs.size());
  EXPECT_EQ(core_->ListAudit("", 0, "x").status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- The repository on its own -----------------------------------------------------------

TEST_P(KmsCoreSuite, RepositoryKeepsAuditTextExactlyAndInOrder) {
  // Audit rows travel as JSON inside one statement: quotes, backslashes, control characters
  // and non-ASCII text must come back byte for byte, in the order given.
  std::vector<AuditEntry> in;
  for (std::string detail : {std::string("quote \" and backslash \\ and {\"json\": 1}"),
                             std::string("line\nbreak\ttab\r\x01\x1f\x7f end"),
                             std::string("caf\xc3\xa9 \xe2\x80\xa6 \\u0041 not an escape")}) {
    AuditEntry e;
    e.at_ms = 1'750'000'000'000 + static_cast<int64_t>(in.size());
    e.actor = "admin:o'brien \"x\"";
    e.action = "test.audit";
    e.sn = "POS-JSON";
    e.detail = detail;
    e.result = "OK";
    in.push_back(e);
  }
  ASSERT_TRUE(repo().AppendAudit(in).ok());
  absl::StatusOr<std::vector<AuditEntry>> out = repo().ListAudit("POS-JSON", 0, 10);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ((*out)[i].detail, in[i].detail);
    EXPECT_EQ((*out)[i].actor, in[i].actor);
    EXPECT_EQ((*out)[i].at_ms, in[i].at_ms);
    if (i > 0) {
      EXPECT_GT((*out)[i].seq, (*out)[i - 1].seq);
    }
  }
}

TEST_P(KmsCoreSuite, RepositoryWritesAnImportWithItsNewSessionOrNeither) {
  TestTerminal t("POS-OPEN", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  absl::StatusOr<Opened> existing = Open(t);  // a session whose id we will try to reuse
  ASSERT_TRUE(existing.ok()) << existing.status();
  TerminalRecord read = Terminal(t.sn());
  const size_t audit_before = AuditOf(t.sn()).size();
  auto session = [&](const std::string& id) {
    return AuthSession{.id = id,
                       .sn = t.sn(),
                       .auk_index = 4242,
                       .rnd1 = Bytes(16, 1),
                       .rnd2 = Bytes(16, 2),
                       .state = SessionState::kOpen,
                       .tmk_kcv = "",
                       .created_at_ms = 10,
                       .expires_at_ms = 20};
  };
  auto audit = [&](const char* action) {
    return std::vector<AuditEntry>{AuditEntry{.at_ms = 1,
                                              .actor = "kms",
                                              .action = action,
                                              .sn = t.sn(),
                                              .detail = "",
                                              .result = "OK"},
                                   AuditEntry{.at_ms = 2,
                                              .actor = "kms",
                                              .action = "test.session",
                                              .sn = t.sn(),
                                              .detail = "",
                                              .result = "OK"}};
  };
  TerminalRecord change = read;
  change.consecutive_failures = 2;

  // A taken session id: neither the terminal change nor any audit entry is written.
  EXPECT_EQ(repo()
                .UpdateTerminalAndInsertSession(change, audit("test.taken"),
                                                session(existing->session_id))
                .code(),
            absl::StatusCode::kAlreadyExists);
  // A stale version: likewise, and the new session does not exist.
  TerminalRecord stale = change;
  stale.version = read.version - 1;
  const std::string fresh_id(32, 'c');
  EXPECT_EQ(
      repo().UpdateTerminalAndInsertSession(stale, audit("test.stale"), session(fresh_id)).code(),
      absl::StatusCode::kAborted);
  EXPECT_EQ(repo().GetSession(fresh_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Terminal(t.sn()).version, read.version);
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, read.consecutive_failures);
  EXPECT_EQ(AuditOf(t.sn()).size(), audit_before);

  // Both, with the entries in order.
  ASSERT_TRUE(
      repo().UpdateTerminalAndInsertSession(change, audit("test.both"), session(fresh_id)).ok());
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 2u);
  EXPECT_EQ(Terminal(t.sn()).version, read.version + 1);
  absl::StatusOr<AuthSession> written = repo().GetSession(fresh_id);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->sn, t.sn());
  EXPECT_EQ(written->auk_index, 4242u);
  EXPECT_EQ(written->rnd2, Bytes(16, 2));
  EXPECT_EQ(written->state, SessionState::kOpen);
  EXPECT_EQ(written->expires_at_ms, 20);
  std::vector<AuditEntry> entries = AuditOf(t.sn());
  ASSERT_EQ(entries.size(), audit_before + 2);
  EXPECT_EQ(entries[audit_before].action, "test.both");
  EXPECT_EQ(entries[audit_before + 1].action, "test.session");
}

TEST_P(KmsCoreSuite, AFirstBeginRecordsTheImportAndOpensTheSessionTogether) {
  TestTerminal t("POS-FIRST", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  const size_t audit_before = AuditOf(t.sn()).size();
  absl::StatusOr<Opened> opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  TerminalRecord after = Terminal(t.sn());
  ASSERT_TRUE(after.auk_index.has_value());
  absl::StatusOr<AuthSession> session = repo().GetSession(opened->session_id);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->auk_index, *after.auk_index);
  // The import's entry, then the session's (one write, RepositoryWritesAnImportWith...).
  std::vector<AuditEntry> entries = AuditOf(t.sn());
  ASSERT_EQ(entries.size(), audit_before + 2);
  EXPECT_EQ(entries[audit_before].action, "tk.import");
  EXPECT_EQ(entries[audit_before + 1].action, "auth.begin");
  EXPECT_THAT(entries[audit_before + 1].detail, HasSubstr(opened->session_id.substr(0, 8)));
  // The terminal completes on it.
  EXPECT_TRUE(core_->CompleteAuthentication(opened->session_id, t.sn(), opened->crnd2).ok());
}

TEST_P(KmsCoreSuite, RepositoryStaleUpdateWritesNothing) {
  TestTerminal t("POS-STALE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  absl::StatusOr<Opened> opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  TerminalRecord read = Terminal(t.sn());
  const size_t audit_before = AuditOf(t.sn()).size();

  TerminalRecord first = read;
  first.consecutive_failures = 3;
  ASSERT_TRUE(repo()
                  .UpdateTerminal(first, false,
                                  {AuditEntry{.at_ms = 1,
                                              .actor = "kms",
                                              .action = "test.first",
                                              .sn = t.sn(),
                                              .detail = "",
                                              .result = "OK"}})
                  .ok());
  // The same version again: refused, and neither its audit entry, its TK change nor its
  // session cancellation is written.
  TerminalRecord stale = read;
  stale.state = TerminalState::kRevoked;
  stale.ctk_pk = Bytes(read.ctk_pk.size(), 0xEE);
  EXPECT_EQ(repo()
                .UpdateTerminal(stale, true,
                                {AuditEntry{.at_ms = 2,
                                            .actor = "kms",
                                            .action = "test.stale",
                                            .sn = t.sn(),
                                            .detail = "",
                                            .result = "OK"}})
                .code(),
            absl::StatusCode::kAborted);
  TerminalRecord now = Terminal(t.sn());
  EXPECT_EQ(now.consecutive_failures, 3u);
  EXPECT_NE(now.state, TerminalState::kRevoked);
  EXPECT_EQ(now.ctk_pk, read.ctk_pk);
  EXPECT_EQ(now.version, read.version + 1);
  std::vector<AuditEntry> audit = AuditOf(t.sn());
  ASSERT_EQ(audit.size(), audit_before + 1);
  EXPECT_EQ(audit.back().action, "test.first");
  absl::StatusOr<AuthSession> session = repo().GetSession(opened->session_id);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->state, SessionState::kOpen);
}

TEST_P(KmsCoreSuite, RepositoryMovesTheSessionWithTheTerminalUpdate) {
  TestTerminal t("POS-MOVE", KeyAlgorithm::kAes128);
  ASSERT_TRUE(Submit(t).ok());
  absl::StatusOr<Opened> opened = Open(t);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const std::string& id = opened->session_id;
  TerminalRecord read = Terminal(t.sn());

  // A stale version: ABORTED, and the session does not move either.
  TerminalRecord stale = read;
  stale.version = read.version - 1;
  EXPECT_EQ(repo()
                .UpdateTerminalAndMoveSession(
                    stale, {}, SessionMove{id, SessionState::kOpen, SessionState::kVerifying, {}})
                .status()
                .code(),
            absl::StatusCode::kAborted);
  ASSERT_EQ(repo().GetSession(id)->state, SessionState::kOpen);

  // The session is in `from`: both change, in one go.
  TerminalRecord next = read;
  next.consecutive_failures = 2;
  absl::StatusOr<bool> moved = repo().UpdateTerminalAndMoveSession(
      next,
      {AuditEntry{.at_ms = 1,
                  .actor = "kms",
                  .action = "test.move",
                  .sn = t.sn(),
                  .detail = "",
                  .result = "OK"}},
      SessionMove{id, SessionState::kOpen, SessionState::kAuthenticated, "ABCDEF"});
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_TRUE(*moved);
  absl::StatusOr<AuthSession> session = repo().GetSession(id);
  ASSERT_TRUE(session.ok());
  EXPECT_EQ(session->state, SessionState::kAuthenticated);
  EXPECT_EQ(session->tmk_kcv, "ABCDEF");
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 2u);
  EXPECT_EQ(AuditOf(t.sn()).back().action, "test.move");

  // The session is no longer in `from`: the terminal update stands, the session stays.
  TerminalRecord after = Terminal(t.sn());
  after.consecutive_failures = 3;
  moved = repo().UpdateTerminalAndMoveSession(
      after, {}, SessionMove{id, SessionState::kOpen, SessionState::kCancelled, std::nullopt});
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_FALSE(*moved);
  EXPECT_EQ(repo().GetSession(id)->state, SessionState::kAuthenticated);
  EXPECT_EQ(repo().GetSession(id)->tmk_kcv, "ABCDEF");
  EXPECT_EQ(Terminal(t.sn()).consecutive_failures, 3u);
}

}  // namespace
}  // namespace rkl::kms::testing
