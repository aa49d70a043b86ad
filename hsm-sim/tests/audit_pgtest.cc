// The audit chain against real PostgreSQL: intact after many commands (also concurrent
// ones), append-only for SQL users, any edited or deleted row reported by its seq; records
// pending (written by commands, not yet chained) are sealed in order, a tampered or
// replayed pending record is chained as tampered, and commands never wait for each other's
// audit record. The role the daemon runs as cannot erase or rewrite the chain; a superuser
// who removes the newest records is caught by an anchor, which is never written over one
// the chain lost, is checked at start-up, and is due by the injected clock.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/notification.h"
#include "hsm_fixture.h"
#include "rkl/audit/actions.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/random.h"
#include "rkl/testing/wait.h"

namespace rkl::hsm {
namespace {

using ::testing::AnyOf;
using testing::Call;
using ::testing::HasSubstr;
using testing::HsmInstance;
using testing::HsmInstanceTest;

// The instance has no background sealer (InstanceOptions' default): each test seals when it
// means to.
class AuditPgTest : public HsmInstanceTest {
 protected:
  absl::StatusOr<v1::VerifyAuditChainResponse> Verify() {
    auto stub = hsm_->Stub("admin:auditor");
    return Call(*stub, &v1::Hsm::Stub::VerifyAuditChain, v1::VerifyAuditChainRequest());
  }

  // VerifyAuditChain finds the whole chain intact.
  void ExpectIntact() {
    auto v = Verify();
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(v->intact());
  }

  // VerifyAuditChain finds the chain broken, first at record `seq`.
  void ExpectBrokenAt(uint64_t seq) {
    auto v = Verify();
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_FALSE(v->intact());
    EXPECT_EQ(v->first_broken_seq(), seq);
  }

  void MakeRecords(int n) {
    auto stub = hsm_->Stub("kms");
    for (int i = 0; i < n; ++i) {
      v1::GenerateRandomRequest req;
      req.set_length(i % 2 == 0 ? 16 : 0);  // successes and failures alike are recorded
      (void)Call(*stub, &v1::Hsm::Stub::GenerateRandom, req);
    }
  }

  // Chained and pending records.
  int64_t Count() { return Chained() + Pending(); }
  int64_t Chained() { return Scalar("SELECT count(*) FROM hsm_audit"); }
  int64_t Pending() { return Scalar("SELECT count(*) FROM hsm_audit_pending"); }
  int64_t Scalar(const std::string& sql) {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    return tx.exec1(sql)[0].as<int64_t>();
  }
  uint64_t Seal() {
    auto n = hsm_->daemon().audit_log().Seal();
    EXPECT_TRUE(n.ok()) << n.status();
    return n.value_or(0);
  }

  // A fresh instance that anchors to a file (every `interval` by its clock; zero: only at
  // start, shutdown and AnchorAuditChain). No background sealer: the test drives it.
  void RestartWithAnchors(absl::Duration interval = absl::ZeroDuration()) {
    hsm_.reset();
    anchor_file_ = pki_->dir() + "/hsm-kms.anchor";
    auto hsm = HsmInstance::Create(*pki_, {.audit_seal_interval = absl::ZeroDuration(),
                                           .anchor_file = anchor_file_,
                                           .anchor_interval = interval});
    ASSERT_TRUE(hsm.ok()) << hsm.status();
    hsm_ = *std::move(hsm);
  }
  std::string AnchorFileText() {
    std::ifstream in(anchor_file_);
    std::string line;
    std::getline(in, line);
    return line;
  }
  uint64_t AnchorFileSeq() {
    auto anchor = ParseAuditAnchor(AnchorFileText());
    EXPECT_TRUE(anchor.ok()) << anchor.status();
    return anchor.ok() ? anchor->seq : 0;
  }
  absl::StatusOr<v1::AnchorAuditChainResponse> AnchorNow() {
    auto stub = hsm_->Stub("admin:auditor");
    return Call(*stub, &v1::Hsm::Stub::AnchorAuditChain, v1::Empty());
  }
  absl::StatusOr<v1::VerifyAuditChainResponse> VerifyWith(const std::string& anchor) {
    auto stub = hsm_->Stub("admin:auditor");
    v1::VerifyAuditChainRequest req;
    req.set_anchor(anchor);
    return Call(*stub, &v1::Hsm::Stub::VerifyAuditChain, req);
  }
  // What a superuser can do and the runtime role cannot: switch the append-only trigger off
  // and delete the newest records.
  void SuperuserRemovesRecordsFrom(uint64_t seq) {
    hsm_->Sql(
        absl::StrCat("ALTER TABLE hsm_audit DISABLE TRIGGER USER; DELETE FROM hsm_audit "
                     "WHERE seq >= ",
                     seq, "; ALTER TABLE hsm_audit ENABLE TRIGGER USER"));
  }
  // Runs `sql` as an attacker with superuser rights would: the append-only trigger switched
  // off around it.
  void Tamper(const std::string& sql) {
    hsm_->Sql(absl::StrCat("ALTER TABLE hsm_audit DISABLE TRIGGER hsm_audit_append_only;", sql,
                           ";ALTER TABLE hsm_audit ENABLE TRIGGER hsm_audit_append_only"));
  }
  // Every chained record, as the superuser sees it.
  std::string ChainDump() {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    return tx
        .exec1(
            "SELECT coalesce(string_agg(seq || ':' || actor || ':' || action || ':' || "
            "encode(mac, 'hex'), ',' ORDER BY seq), '') FROM hsm_audit")[0]
        .as<std::string>();
  }

  std::string anchor_file_;
};

TEST_F(AuditPgTest, ChainIsIntactAndCountsEveryRecord) {
  MakeRecords(6);
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact());
  EXPECT_EQ(v->records_checked(), 6u);
  EXPECT_EQ(v->first_broken_seq(), 0u);
  EXPECT_EQ(Count(), 7);  // the verification itself is recorded too
}

TEST_F(AuditPgTest, SqlCannotUpdateOrDeleteRecords) {
  MakeRecords(2);
  EXPECT_THROW(hsm_->Sql("UPDATE hsm_audit SET result = 'OK'"), pqxx::sql_error);
  EXPECT_THROW(hsm_->Sql("DELETE FROM hsm_audit"), pqxx::sql_error);
}

TEST_F(AuditPgTest, EditedRecordIsReportedBySeq) {
  MakeRecords(8);
  Seal();
  Tamper("UPDATE hsm_audit SET actor = 'admin:nobody' WHERE seq = 4");
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->intact());
  EXPECT_EQ(v->first_broken_seq(), 4u);
  EXPECT_EQ(v->records_checked(), 4u);
}

TEST_F(AuditPgTest, EditedResultOrMacIsReported) {
  MakeRecords(5);
  Seal();
  Tamper(
      "UPDATE hsm_audit SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1) WHERE seq = 5;"
      "UPDATE hsm_audit SET result = 'OK' WHERE seq = 2");
  ExpectBrokenAt(2);
}

TEST_F(AuditPgTest, DeletedRecordIsReportedAtTheGap) {
  MakeRecords(6);
  Seal();
  Tamper("DELETE FROM hsm_audit WHERE seq = 3");
  ExpectBrokenAt(4);
}

TEST_F(AuditPgTest, ChainFromAnotherLmkDoesNotVerify) {
  MakeRecords(3);
  Seal();  // by the daemon, with the right key
  // Same rows, MACs recomputed by someone without the LMK: they cannot, so they forge with
  // a key of their own — here simulated by verifying under another LMK's audit key.
  db::ConnectionPool pool(db::PoolOptions{.dsn = hsm_->runtime_dsn()});
  PgAuditLog other(pool, DeriveAuditKey(crypto::RandomSecret(32), "hsm-kms").value());
  auto v = other.Verify(nullptr);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->first_broken_seq, 1u);
}

TEST_F(AuditPgTest, ConcurrentCommandsBuildOneChain) {
  // 18 terminals with a key each (18 records); 60 revocations of them from 6 threads.
  for (int t = 0; t < 6; ++t) {
    for (int i = 0; i < 3; ++i) {
      testing::InsertTestKey(*hsm_, KeyType::kTmk, absl::StrCat("SN-", t, "-", i));
    }
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      auto stub = hsm_->Stub("kms");
      for (int i = 0; i < 10; ++i) {
        v1::DestroyTerminalKeysRequest req;  // a command that writes in a transaction
        req.set_sn(absl::StrCat("SN-", t, "-", i % 3));
        EXPECT_TRUE(Call(*stub, &v1::Hsm::Stub::DestroyTerminalKeys, req).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact());
  EXPECT_EQ(v->records_checked(), 78u);
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  // 78 commands, then the verification's own record, sealed in one gap-free chain.
  EXPECT_EQ(Seal(), 1u);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_audit_pending")[0].as<int64_t>(), 0);
  EXPECT_EQ(tx.exec1("SELECT max(seq) - min(seq) + 1 FROM hsm_audit")[0].as<int64_t>(), 79);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_audit")[0].as<int64_t>(), 79);
  // Every key destroyed exactly once, whatever the interleaving.
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_key WHERE state = 3")[0].as<int64_t>(), 18);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_audit WHERE action = 'terminal.keys_destroy' "
                     "AND detail LIKE 'destroyed=%'")[0]
                .as<int64_t>(),
            18);
}

TEST_F(AuditPgTest, RecordsStayPendingUntilSealedThenChainInOrder) {
  MakeRecords(3);
  EXPECT_EQ(Chained(), 0);
  EXPECT_EQ(Pending(), 3);
  EXPECT_EQ(Seal(), 3u);
  EXPECT_EQ(Chained(), 3);
  EXPECT_EQ(Pending(), 0);
  EXPECT_EQ(Seal(), 0u);  // nothing twice
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  auto rows = tx.exec("SELECT seq, result FROM hsm_audit ORDER BY seq");
  ASSERT_EQ(rows.size(), 3u);
  // MakeRecords alternates success and failure: the chain keeps the commands' order.
  EXPECT_EQ(rows[0][1].as<std::string>(), "OK");
  EXPECT_EQ(rows[1][1].as<std::string>(), "INVALID_ARGUMENT");
  EXPECT_EQ(rows[2][1].as<std::string>(), "OK");
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact());
  EXPECT_EQ(v->records_checked(), 3u);
}

TEST_F(AuditPgTest, SealedBatchKeepsEveryRecordsTextByteForByte) {
  // The sealer writes a batch as one JSON statement: quoting must not change one byte.
  const std::vector<std::string> details = {"quote \" backslash \\ slash /",
                                            "line\nbreak\ttab\r",
                                            "control \x01\x1f",
                                            "utf-8 \xc3\xa9\xe2\x82\xac \xf0\x9f\x94\x91",
                                            "{\"json\": [1, 2]}",
                                            ""};
  for (size_t i = 0; i < details.size(); ++i) {
    absl::Status s =
        hsm_->daemon().audit_log().Append(AuditEvent{.at_ms = static_cast<int64_t>(i + 1),
                                                     .actor = "kms",
                                                     .action = "test_text",
                                                     .sn = "SN-" + std::to_string(i),
                                                     .detail = details[i],
                                                     .result = "OK"});
    ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_EQ(Seal(), details.size());
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  auto rows = tx.exec("SELECT detail, sn FROM hsm_audit WHERE action = 'test_text' ORDER BY seq");
  ASSERT_EQ(rows.size(), details.size());
  for (size_t i = 0; i < details.size(); ++i) {
    EXPECT_EQ(rows[i][0].as<std::string>(), details[i]);
    EXPECT_EQ(rows[i][1].as<std::string>(), "SN-" + std::to_string(i));
  }
  ExpectIntact();
}

TEST_F(AuditPgTest, BackgroundSealerChainsRecordsByItself) {
  hsm_.reset();
  auto hsm = HsmInstance::Create(*pki_, {.audit_seal_interval = absl::Milliseconds(20)});
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  hsm_ = *std::move(hsm);
  MakeRecords(5);
  // Wait for the sealer's work, not for a duration.
  EXPECT_TRUE(rkl::testing::WaitUntil([&] { return Chained() == 5; }));
  EXPECT_EQ(Chained(), 5);
  EXPECT_EQ(Pending(), 0);
}

TEST_F(AuditPgTest, PendingRecordsAreSealedAtShutdown) {
  MakeRecords(4);
  EXPECT_EQ(Pending(), 4);
  hsm_->daemon().audit_log().Start(absl::Hours(1));  // a sealer that would not run for an hour
  hsm_->Stop();
  EXPECT_EQ(Pending(), 0);
  EXPECT_EQ(Chained(), 4);
}

TEST_F(AuditPgTest, PendingRecordEditedBeforeSealingIsChainedAsTampered) {
  MakeRecords(3);
  // An attacker edits a record in the short window before it is chained.
  hsm_->Sql(
      "UPDATE hsm_audit_pending SET actor = 'admin:nobody' WHERE id = "
      "(SELECT min(id) + 1 FROM hsm_audit_pending)");
  EXPECT_EQ(Seal(), 3u);
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  auto row = tx.exec1("SELECT actor, action, result FROM hsm_audit WHERE seq = 2");
  EXPECT_EQ(row[0].as<std::string>(), "hsm");
  EXPECT_EQ(row[1].as<std::string>(), audit::action::kAuditRecordTampered);
  EXPECT_EQ(row[2].as<std::string>(), "DATA_LOSS");
  EXPECT_EQ(
      tx.exec1("SELECT count(*) FROM hsm_audit WHERE actor = 'admin:nobody'")[0].as<int64_t>(), 0);
  ExpectBrokenAt(2);
}

TEST_F(AuditPgTest, ReplayedPendingRecordIsChainedAsTampered) {
  MakeRecords(2);
  // A copy of a genuine record under a new id: its MAC covers the old id.
  hsm_->Sql(
      "INSERT INTO hsm_audit_pending (at_ms, actor, action, sn, detail, result, mac) "
      "SELECT at_ms, actor, action, sn, detail, result, mac FROM hsm_audit_pending "
      "ORDER BY id LIMIT 1");
  EXPECT_EQ(Seal(), 3u);
  ExpectBrokenAt(3);
}

TEST_F(AuditPgTest, CommandsDoNotWaitForEachOthersAuditRecord) {
  // Transaction A writes its audit record and stays open until B — another command that
  // writes one too — has committed. When appends serialized on a lock held until commit,
  // B waited for A and A gave up waiting for B.
  absl::Notification a_appended, b_committed;
  bool b_seen_while_a_open = false;
  std::thread a([&] {
    absl::Status s = hsm_->daemon().key_barrier().Transact([&](KeyTransaction& tx) {
      RKL_RETURN_IF_ERROR(tx.Audit(AuditEvent{.at_ms = 1, .actor = "a", .action = "test"}));
      a_appended.Notify();
      b_seen_while_a_open = b_committed.WaitForNotificationWithTimeout(absl::Seconds(30));
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
  });
  ASSERT_TRUE(a_appended.WaitForNotificationWithTimeout(absl::Seconds(60)));
  absl::Status s = hsm_->daemon().key_barrier().Transact([&](KeyTransaction& tx) {
    return tx.Audit(AuditEvent{.at_ms = 2, .actor = "b", .action = "test"});
  });
  EXPECT_TRUE(s.ok()) << s;
  b_committed.Notify();
  a.join();
  EXPECT_TRUE(b_seen_while_a_open);
  EXPECT_EQ(Seal(), 2u);
  ExpectIntact();
}

TEST_F(AuditPgTest, GroupedRecordsQueuedDuringAWriteShareTheNextTransaction) {
  // The first record is held in its write until seven more have queued behind it: those
  // seven must then go in one group, and every caller returns only once its record is in.
  PgAuditLog& log = hsm_->daemon().audit_log();
  absl::Notification release;
  std::atomic<bool> first{true};
  log.SetGroupHookForTest([&] {
    if (first.exchange(false)) release.WaitForNotification();
  });
  const uint64_t groups_before = log.groups_written();
  const int64_t pending_before = Pending();
  std::atomic<int> failed{0};
  auto append = [&](int i) {
    AuditEvent e{.at_ms = 1000 + i,
                 .actor = "kms",
                 .action = "test_group",
                 .detail = absl::StrCat("record ", i),
                 .result = "OK"};
    if (!log.AppendGrouped(e).ok()) ++failed;
  };
  std::vector<std::thread> callers;
  callers.emplace_back(append, 0);
  while (first.load()) std::this_thread::yield();  // record 0 is being written, and held
  for (int i = 1; i < 8; ++i) callers.emplace_back(append, i);
  while (log.queued_for_test() < 7) std::this_thread::yield();
  release.Notify();
  for (auto& t : callers) t.join();
  log.SetGroupHookForTest(nullptr);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(log.groups_written() - groups_before, 2u);
  EXPECT_EQ(Pending() - pending_before, 8);
  Seal();
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact());
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit WHERE action = 'test_group'"), 8);
}

TEST_F(AuditPgTest, AGroupThatCannotBeWrittenFailsItsCallers) {
  PgAuditLog& log = hsm_->daemon().audit_log();
  hsm_->Sql("ALTER TABLE hsm_audit_pending RENAME TO hsm_audit_pending_away");
  AuditEvent e{.at_ms = 1, .actor = "kms", .action = "test_group", .result = "OK"};
  EXPECT_FALSE(log.AppendGrouped(e).ok());
  hsm_->Sql("ALTER TABLE hsm_audit_pending_away RENAME TO hsm_audit_pending");
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_group'"), 0);
  EXPECT_TRUE(log.AppendGrouped(e).ok());  // and the log carries on afterwards
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit_pending WHERE action = 'test_group'"), 1);
}

TEST_F(AuditPgTest, ReadOnlyCommandAnswersOnlyWithItsRecordWritten) {
  // GenerateRandom changes no key: its record goes through the grouped path. With the
  // pending table unavailable the command must fail rather than answer unaudited.
  hsm_->Sql("ALTER TABLE hsm_audit_pending RENAME TO hsm_audit_pending_away");
  auto stub = hsm_->Stub("kms");
  v1::GenerateRandomRequest req;
  req.set_length(16);
  auto r = Call(*stub, &v1::Hsm::Stub::GenerateRandom, req);
  EXPECT_FALSE(r.ok());
  hsm_->Sql("ALTER TABLE hsm_audit_pending_away RENAME TO hsm_audit_pending");
  r = Call(*stub, &v1::Hsm::Stub::GenerateRandom, req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit_pending WHERE action = 'random.generate' "
                   "AND result = 'OK'"),
            1);
}

TEST_F(AuditPgTest, TheRoleTheDaemonRunsAsCannotEraseOrRewriteTheChain) {
  MakeRecords(4);
  Seal();
  const std::string before = ChainDump();
  ASSERT_NE(before, "");
  for (const char* attack :
       {"DELETE FROM hsm_audit WHERE seq = 4", "UPDATE hsm_audit SET actor = 'admin:nobody'",
        "TRUNCATE hsm_audit", "ALTER TABLE hsm_audit DISABLE TRIGGER USER",
        "ALTER TABLE hsm_audit DISABLE TRIGGER hsm_audit_append_only",
        "DROP TRIGGER hsm_audit_append_only ON hsm_audit", "DROP TABLE hsm_audit",
        "TRUNCATE hsm_audit_pending", "TRUNCATE hsm_key", "DELETE FROM hsm_key",
        "ALTER TABLE hsm_key ADD COLUMN clear bytea", "CREATE TABLE stash (k bytea)"}) {
    std::string refused;
    try {
      pqxx::connection conn(hsm_->runtime_dsn());
      pqxx::work tx(conn);
      tx.exec(attack);
      tx.commit();
    } catch (const std::exception& e) {
      refused = e.what();
    }
    EXPECT_THAT(refused, AnyOf(HasSubstr("permission denied"), HasSubstr("must be owner")))
        << attack;
  }
  EXPECT_EQ(ChainDump(), before);
  auto v = Verify();
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact());
  EXPECT_EQ(v->first_broken_seq(), 0u);
}

TEST_F(AuditPgTest, AnAnchorCatchesTheNewestRecordsRemovedBySuperuser) {
  RestartWithAnchors();
  MakeRecords(5);
  auto anchored = AnchorNow();
  ASSERT_TRUE(anchored.ok()) << anchored.status();
  EXPECT_EQ(anchored->seq(), 5u);
  EXPECT_EQ(AnchorFileText(), anchored->anchor());
  auto held = VerifyWith(anchored->anchor());
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(held->intact()) << held->finding();
  EXPECT_EQ(held->anchor_seq(), 5u);

  // Records 4 to 6 (the anchor's own record was chained by that verification) are removed.
  SuperuserRemovesRecordsFrom(4);
  auto cut = VerifyWith(anchored->anchor());
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_FALSE(cut->intact());
  EXPECT_EQ(cut->first_broken_seq(), 5u);  // the verification's record was chained as 4
  EXPECT_THAT(cut->finding(), HasSubstr("the chain ends at record 4"));
  EXPECT_THAT(cut->finding(), HasSubstr("records 5..5 were removed"));

  // Without the anchor the chain alone looks whole: that is the gap the anchor closes.
  auto alone = Verify();
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_TRUE(alone->intact());

  // New records now carry the removed ones' numbers, but not their MACs.
  auto reused = VerifyWith(anchored->anchor());
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_FALSE(reused->intact());
  EXPECT_EQ(reused->first_broken_seq(), 5u);
  EXPECT_THAT(reused->finding(), HasSubstr("record 5 is not the one anchored"));
}

TEST_F(AuditPgTest, AnAnchorIsNeverWrittenOverOneTheChainNoLongerHolds) {
  RestartWithAnchors();
  MakeRecords(3);
  auto anchored = AnchorNow();
  ASSERT_TRUE(anchored.ok()) << anchored.status();
  const std::string evidence = AnchorFileText();
  SuperuserRemovesRecordsFrom(2);

  auto refused = AnchorNow();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("no longer holds record 3"));
  EXPECT_EQ(AnchorFileText(), evidence);
  Seal();
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit WHERE action = 'audit.anchor_mismatch' AND "
                   "actor = 'hsm' AND result = 'DATA_LOSS'"),
            1);

  // Once the file is moved away (kept as evidence), anchoring starts afresh.
  std::filesystem::rename(anchor_file_, anchor_file_ + ".evidence");
  auto fresh = AnchorNow();
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  auto v = VerifyWith(fresh->anchor());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->intact()) << v->finding();
}

TEST_F(AuditPgTest, AChainCutWhileTheHsmWasDownIsFoundAtStart) {
  RestartWithAnchors();
  MakeRecords(3);
  hsm_->Stop();  // seals and anchors the last records
  const std::string at_shutdown = AnchorFileText();
  auto anchor = ParseAuditAnchor(at_shutdown);
  ASSERT_TRUE(anchor.ok()) << anchor.status();
  EXPECT_EQ(anchor->seq, 3u);
  SuperuserRemovesRecordsFrom(3);

  ASSERT_TRUE(hsm_->Start().ok());  // it serves, so the finding can be read and verified
  EXPECT_EQ(AnchorFileText(), at_shutdown);
  Seal();
  EXPECT_EQ(Scalar("SELECT count(*) FROM hsm_audit WHERE action = 'audit.anchor_mismatch'"), 1);
  auto v = VerifyWith(at_shutdown);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->intact());
  EXPECT_EQ(v->first_broken_seq(), 3u);
}

TEST_F(AuditPgTest, AnchorsAreDueByTheInjectedClock) {
  RestartWithAnchors(absl::Minutes(1));
  EXPECT_EQ(AnchorFileSeq(), 0u);  // anchored at start-up, on an empty chain
  MakeRecords(2);
  PgAuditLog& log = hsm_->daemon().audit_log();
  auto due = log.AnchorIfDue();
  ASSERT_TRUE(due.ok()) << due.status();
  EXPECT_FALSE(*due);
  hsm_->clock().Advance(absl::Seconds(59));
  EXPECT_FALSE(log.AnchorIfDue().value_or(true));
  EXPECT_EQ(AnchorFileSeq(), 0u);
  hsm_->clock().Advance(absl::Seconds(1));
  EXPECT_TRUE(log.AnchorIfDue().value_or(false));
  EXPECT_EQ(AnchorFileSeq(), 2u);
  EXPECT_FALSE(log.AnchorIfDue().value_or(true));  // the next one is a minute away again
}

TEST_F(AuditPgTest, AnAnchorThatIsNotThisHsmsIsRefused) {
  RestartWithAnchors();
  MakeRecords(2);
  auto anchored = AnchorNow();
  ASSERT_TRUE(anchored.ok()) << anchored.status();
  ASSERT_EQ(anchored->seq(), 2u);

  // Edited to claim fewer records: the MAC no longer verifies.
  const std::string edited = absl::StrReplaceAll(anchored->anchor(), {{" seq=2 ", " seq=1 "}});
  ASSERT_NE(edited, anchored->anchor());
  EXPECT_EQ(VerifyWith(edited).status().code(), absl::StatusCode::kUnauthenticated);
  // Well formed, MACed with another LMK's audit key (another HSM, or a forger).
  auto foreign = ParseAuditAnchor(anchored->anchor());
  ASSERT_TRUE(foreign.ok());
  foreign->mac =
      AuditAnchorMac(DeriveAuditKey(crypto::RandomSecret(32), "hsm-kms").value(), *foreign).value();
  EXPECT_EQ(VerifyWith(FormatAuditAnchor(*foreign)).status().code(),
            absl::StatusCode::kUnauthenticated);
  // Not an anchor at all, or far too long: refused without repeating it.
  for (const std::string& junk :
       {std::string("hello"), std::string(600, 'x'),
        absl::StrReplaceAll(anchored->anchor(), {{"head=", "head=zz"}})}) {
    auto r = VerifyWith(junk);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << junk;
    EXPECT_LT(r.status().message().size(), 200u);
  }
}

}  // namespace
}  // namespace rkl::hsm
