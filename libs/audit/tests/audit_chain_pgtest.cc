// rkl::audit's chain against real PostgreSQL, on tables shaped like KMS's and MTMS's: intact
// after records written every way a service writes them (its own statement, a transaction,
// a group) and by two replicas at once; a superuser who updates a field, deletes a middle
// row, reorders rows, or tampers with a pending record is caught at the first broken
// record; removing the newest records is caught with an anchor. The MAC key file is read
// like the LMK file and bound to the database by its KCV.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rkl/audit/actions.h"
#include "rkl/audit/audit_log.h"
#include "rkl/audit/mac_key.h"
#include "rkl/common/request_id.h"
#include "rkl/crypto/random.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"
#include "rkl/testing/service_database.h"

namespace rkl::audit {
namespace {

using ::testing::HasSubstr;

// The shape of services/kms and services/mtms migrations (audit, audit_pending, audit_key).
constexpr char kSchema[] = R"sql(
CREATE TABLE audit (
  seq bigint PRIMARY KEY CHECK (seq > 0), at_ms bigint NOT NULL, actor text NOT NULL,
  action text NOT NULL, sn text NOT NULL, detail text NOT NULL, result text NOT NULL,
  mac bytea NOT NULL);
CREATE SEQUENCE audit_pending_id_seq AS bigint;
CREATE TABLE audit_pending (
  id bigint PRIMARY KEY, at_ms bigint NOT NULL, actor text NOT NULL, action text NOT NULL,
  sn text NOT NULL, detail text NOT NULL, result text NOT NULL, mac bytea NOT NULL);
CREATE TABLE audit_key (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), kcv text NOT NULL,
  created_at_ms bigint NOT NULL);
ALTER TABLE audit_pending ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN request_id text NOT NULL DEFAULT '';
)sql";

ChainSpec TestChain(std::string name = "kms") {
  return ChainSpec{.name = std::move(name),
                   .chain_table = "audit",
                   .pending_table = "audit_pending",
                   .pending_id_sequence = "audit_pending_id_seq",
                   .lock_class = 0x524B4C54,
                   .pending_id_block = 4};
}

// What KMS's and MTMS's repositories do: the pending records in their own statement.
constexpr char kInsertPending[] =
    "INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail, result, mac) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

AuditEvent Event(int i) {
  return AuditEvent{.at_ms = 1'700'000'000'000 + i,
                    .actor = "terminal:SN1",
                    .action = "auth.begin",
                    .sn = absl::StrCat("SN", i),
                    .detail = absl::StrCat("auk_kcv ABC", i),
                    .result = i % 3 == 0 ? "FAILED_PRECONDITION" : "OK"};
}

class AuditChainPgTest : public testing::PgFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    Sql(kSchema);
    pool_.emplace(db::PoolOptions{.dsn = database().dsn(), .max_size = 8});
    key_ = crypto::RandomSecret(kAuditMacKeySize);
    log_ = std::make_unique<PgAuditLog>(*pool_, key_, TestChain());
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("rkl-audit-pgtest-", ::getpid(), "-", database().name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    log_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // n records, each in a statement of its own as a service writes them; then sealed.
  void Write(PgAuditLog& log, int first, int n) {
    for (int i = first; i < first + n; ++i) ASSERT_NO_FATAL_FAILURE(WriteEvent(log, Event(i)));
  }
  void WriteEvent(PgAuditLog& log, const AuditEvent& e) {
    auto prepared = log.PreparePending({&e, 1});
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    absl::Status s = db::RunAutocommitWrite(*pool_, [&](db::OneStatement& stmt) {
      const PgAuditLog::PreparedPending& p = (*prepared)[0];
      stmt.Exec(kInsertPending, p.id, e.at_ms, e.actor, e.action, e.sn, e.detail, e.result,
                pqxx::binarystring(p.mac.data(), p.mac.size()));
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;
  }

  AuditVerification Verify(const AuditAnchor* anchor = nullptr) {
    auto v = log_->Verify(anchor);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.value_or(AuditVerification{.intact = false, .finding = "Verify failed"});
  }

  std::optional<db::ConnectionPool> pool_;
  crypto::SecretBytes key_;
  std::unique_ptr<PgAuditLog> log_;
  std::filesystem::path dir_;
};

TEST_F(AuditChainPgTest, RecordsWrittenEveryWayFormOneIntactChain) {
  Write(*log_, 1, 5);
  ASSERT_TRUE(log_->Append(Event(6)).ok());
  std::vector<AuditEvent> group = {Event(7), Event(8)};
  ASSERT_TRUE(log_->AppendGrouped(group).ok());
  AuditEvent in_tx = Event(9);
  ASSERT_TRUE(db::RunInTransaction(*pool_, [&](pqxx::work& tx) {
                return log_->AppendInTransaction(tx, in_tx);
              }).ok());
  AuditVerification v = Verify();
  EXPECT_TRUE(v.intact) << v.finding;
  EXPECT_EQ(v.records_checked, 9u);
  EXPECT_EQ(Sql("SELECT count(*), min(seq), max(seq) FROM audit")[0][0].as<int>(), 9);
  EXPECT_EQ(Sql("SELECT count(*) FROM audit_pending")[0][0].as<int>(), 0);
  // In the order they were written (one writer), each with its own content.
  EXPECT_EQ(Sql("SELECT sn FROM audit WHERE seq = 7")[0][0].as<std::string>(), "SN7");
}

// ---- Request ids -----------------------------------------------------------------------------

// The canonical record as it was defined before request ids, spelled out byte by byte.
Bytes OldCanonicalRecord(uint64_t seq, const AuditEvent& e) {
  Bytes out;
  auto be = [&out](uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  be(seq, 8);
  be(static_cast<uint64_t>(e.at_ms), 8);
  for (const std::string* text : {&e.actor, &e.action, &e.sn, &e.detail, &e.result}) {
    be(text->size(), 4);
    out.insert(out.end(), text->begin(), text->end());
  }
  return out;
}

TEST(CanonicalAuditRecord, ARecordWithoutRequestIdKeepsItsOldEncoding) {
  const AuditEvent e = Event(4);
  EXPECT_EQ(CanonicalAuditRecord(4, e), OldCanonicalRecord(4, e));
}

TEST(CanonicalAuditRecord, ARequestIdIsAppendedAsOneMoreTextField) {
  AuditEvent e = Event(4);
  e.request_id = "flow-1";
  Bytes expected = OldCanonicalRecord(4, e);
  for (uint8_t b : Bytes{0, 0, 0, 6, 'f', 'l', 'o', 'w', '-', '1'}) expected.push_back(b);
  EXPECT_EQ(CanonicalAuditRecord(4, e), expected);
}

TEST(CanonicalAuditRecord, WithCurrentRequestIdFillsOnlyAMissingId) {
  EXPECT_EQ(WithCurrentRequestId(Event(1)).request_id, "");
  const ScopedRequestId scope("flow-2");
  EXPECT_EQ(WithCurrentRequestId(Event(1)).request_id, "flow-2");
  AuditEvent named = Event(1);
  named.request_id = "own-3";
  EXPECT_EQ(WithCurrentRequestId(named).request_id, "own-3");
}

TEST_F(AuditChainPgTest, RecordsCarryTheWritersRequestIdEveryWayTheyAreWritten) {
  {
    const ScopedRequestId scope("flow-append");
    ASSERT_TRUE(log_->Append(Event(1)).ok());
  }
  {
    const ScopedRequestId scope("flow-group");
    std::vector<AuditEvent> group = {Event(2), Event(3)};
    ASSERT_TRUE(log_->AppendGrouped(group).ok());
  }
  {
    const ScopedRequestId scope("flow-tx");
    AuditEvent in_tx = Event(4);
    ASSERT_TRUE(db::RunInTransaction(*pool_, [&](pqxx::work& tx) {
                  return log_->AppendInTransaction(tx, in_tx);
                }).ok());
  }
  ASSERT_TRUE(log_->Append(Event(5)).ok());  // no request: no id
  AuditEvent named = Event(6);
  named.request_id = "named-6";
  {
    const ScopedRequestId scope("flow-ignored");
    ASSERT_TRUE(log_->Append(named).ok());  // an id the event names is kept
  }
  // A caller's own statement stores what PreparePending MACed.
  {
    AuditEvent own = WithCurrentRequestId(Event(7));
    own.request_id = "own-7";
    auto prepared = log_->PreparePending({&own, 1});
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    const PgAuditLog::PreparedPending& p = (*prepared)[0];
    Sql(absl::StrCat(
        "INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail, result, "
        "mac, request_id) VALUES (",
        p.id, ", ", own.at_ms, ", '", own.actor, "', '", own.action, "', '", own.sn, "', '",
        own.detail, "', '", own.result, "', decode('", ToHex(p.mac), "', 'hex'), 'own-7')"));
  }
  AuditVerification v = Verify();
  EXPECT_TRUE(v.intact) << v.finding;
  EXPECT_EQ(v.records_checked, 7u);
  pqxx::result r = Sql("SELECT sn, request_id FROM audit ORDER BY seq");
  std::vector<std::string> ids;
  for (const auto& row : r)
    ids.push_back(row[0].as<std::string>() + "=" + row[1].as<std::string>());
  EXPECT_EQ(ids, (std::vector<std::string>{"SN1=flow-append", "SN2=flow-group", "SN3=flow-group",
                                           "SN4=flow-tx", "SN5=", "SN6=named-6", "SN7=own-7"}));
}

TEST_F(AuditChainPgTest, AGroupWrittenByAnotherThreadKeepsEachCallersRequestId) {
  // The first group's writer waits until two more callers have queued; one of them then
  // writes both their records.
  std::atomic<bool> first{true};
  log_->SetGroupHookForTest([&] {
    if (first.exchange(false)) {
      while (log_->queued_for_test() < 2) std::this_thread::yield();
    }
  });
  std::vector<std::thread> callers;
  for (int i = 1; i <= 3; ++i) {
    callers.emplace_back([&, i] {
      if (i > 1) {
        while (first.load()) std::this_thread::yield();  // after the first group began
      }
      const ScopedRequestId scope(absl::StrCat("caller-", i));
      EXPECT_TRUE(log_->AppendGrouped(Event(i)).ok());
    });
    if (i == 1) {
      while (first.load()) std::this_thread::yield();
    }
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(log_->groups_written(), 2u);
  ASSERT_TRUE(Verify().intact);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(Sql(absl::StrCat("SELECT request_id FROM audit WHERE sn = 'SN", i, "'"))[0][0]
                  .as<std::string>(),
              absl::StrCat("caller-", i));
  }
}

TEST_F(AuditChainPgTest, AChainSealedBeforeRequestIdsStillVerifies) {
  // Records as the code before request ids sealed them: the old canonical record, and the
  // column at its default.
  Bytes prev(kAuditMacSize, 0);
  for (int seq = 1; seq <= 3; ++seq) {
    const AuditEvent e = Event(seq);
    Bytes data = prev;
    const Bytes record = OldCanonicalRecord(static_cast<uint64_t>(seq), e);
    data.insert(data.end(), record.begin(), record.end());
    absl::StatusOr<Bytes> mac = HmacSha256(key_, data);
    ASSERT_TRUE(mac.ok());
    Sql(
        absl::StrCat("INSERT INTO audit (seq, at_ms, actor, action, sn, detail, result, mac) "
                     "VALUES (",
                     seq, ", ", e.at_ms, ", '", e.actor, "', '", e.action, "', '", e.sn, "', '",
                     e.detail, "', '", e.result, "', decode('", ToHex(*mac), "', 'hex'))"));
    prev = *mac;
  }
  {
    const ScopedRequestId scope("flow-after");
    ASSERT_TRUE(log_->Append(Event(4)).ok());  // the chain goes on with an id
  }
  AuditVerification v = Verify();
  EXPECT_TRUE(v.intact) << v.finding;
  EXPECT_EQ(v.records_checked, 4u);
}

TEST_F(AuditChainPgTest, EditingAStoredRequestIdBreaksTheChainThere) {
  for (int i = 1; i <= 4; ++i) {
    const ScopedRequestId scope(i == 3 ? "" : absl::StrCat("flow-", i));
    ASSERT_TRUE(log_->Append(Event(i)).ok());
  }
  ASSERT_TRUE(log_->Seal().ok());
  ASSERT_TRUE(Verify().intact);
  Sql("UPDATE audit SET request_id = 'flow-other' WHERE seq = 2");
  AuditVerification v = Verify();
  EXPECT_FALSE(v.intact);
  EXPECT_EQ(v.first_broken_seq, 2u);
  EXPECT_THAT(v.finding, HasSubstr("record 2 does not match its MAC"));
}

TEST_F(AuditChainPgTest, GivingARecordWithoutRequestIdOneBreaksTheChainThere) {
  for (int i = 1; i <= 4; ++i) {
    const ScopedRequestId scope(i == 3 ? "" : absl::StrCat("flow-", i));
    ASSERT_TRUE(log_->Append(Event(i)).ok());
  }
  ASSERT_TRUE(log_->Seal().ok());
  Sql("UPDATE audit SET request_id = 'flow-forged' WHERE seq = 3");
  AuditVerification v = Verify();
  EXPECT_FALSE(v.intact);
  EXPECT_EQ(v.first_broken_seq, 3u);
}

TEST_F(AuditChainPgTest, EditingAPendingRecordsRequestIdIsChainedAsTampered) {
  {
    const ScopedRequestId scope("flow-1");
    ASSERT_TRUE(log_->Append(Event(1)).ok());
  }
  Sql("UPDATE audit_pending SET request_id = 'flow-2'");
  ASSERT_TRUE(log_->Seal().ok());
  EXPECT_EQ(Sql("SELECT action, request_id FROM audit WHERE seq = 1")[0][0].as<std::string>(),
            action::kAuditRecordTampered);
  EXPECT_EQ(Sql("SELECT request_id FROM audit WHERE seq = 1")[0][0].as<std::string>(), "");
  EXPECT_FALSE(Verify().intact);
}

// A superuser's change to eight sealed records, and where Verify must report the break.
struct Tampering {
  std::string name;
  std::vector<std::string> sql;  // run behind the log's back, in order
  uint64_t first_broken_seq;
  std::string finding;  // a part of the finding (empty: any finding)
};

class AuditChainTamperingTest : public AuditChainPgTest,
                                public ::testing::WithParamInterface<Tampering> {};

TEST_P(AuditChainTamperingTest, IsReportedWhereTheChainBreaks) {
  const Tampering& t = GetParam();
  Write(*log_, 1, 8);
  ASSERT_TRUE(log_->Seal().ok());
  for (const std::string& statement : t.sql) Sql(statement);
  AuditVerification v = Verify();
  EXPECT_FALSE(v.intact);
  EXPECT_EQ(v.first_broken_seq, t.first_broken_seq);
  EXPECT_THAT(v.finding, HasSubstr(t.finding));
}

INSTANTIATE_TEST_SUITE_P(
    Superuser, AuditChainTamperingTest,
    ::testing::Values(Tampering{"AnUpdatedFieldAtItsRecord",
                                {"UPDATE audit SET result = 'OK' WHERE seq = 3"},
                                3,
                                "record 3 does not match its MAC"},
                      Tampering{"ADeletedMiddleRowAtTheGap",
                                {"DELETE FROM audit WHERE seq = 4"},
                                5,
                                "record 4 is missing"},
                      // Swap records 5 and 6, MACs and all: each is genuine, but no longer follows
                      // its predecessor.
                      Tampering{"ReorderedRows",
                                {"UPDATE audit SET seq = seq + 1000 WHERE seq IN (5, 6)",
                                 "UPDATE audit SET seq = CASE seq WHEN 1005 THEN 6 ELSE 5 END "
                                 "WHERE seq IN (1005, 1006)"},
                                5,
                                ""}),
    [](const ::testing::TestParamInfo<Tampering>& info) { return info.param.name; });

TEST_F(AuditChainPgTest, RemovingTheNewestRecordsIsFoundOnlyWithAnAnchor) {
  const std::string file = (dir_ / "kms.anchor").string();
  log_->ConfigureAnchors({.instance_id = "kms-1", .file = file});
  Write(*log_, 1, 10);
  auto anchor = log_->Anchor();
  ASSERT_TRUE(anchor.ok()) << anchor.status();
  EXPECT_EQ(anchor->seq, 10u);
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  EXPECT_THAT(line, HasSubstr("rkl-kms-audit-anchor v1 kms=kms-1 seq=10 "));

  Sql("DELETE FROM audit WHERE seq >= 8");
  EXPECT_TRUE(Verify().intact);  // what is left is a whole chain
  auto v = log_->VerifyWithAnchorText(line);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->intact);
  EXPECT_EQ(v->first_broken_seq, 8u);
  EXPECT_THAT(v->finding, HasSubstr("records 8..10 were removed"));
  // The log never anchors over what it lost, and says so in the chain.
  EXPECT_EQ(log_->Anchor().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(log_->Seal().ok());
  EXPECT_EQ(
      Sql("SELECT actor, action FROM audit ORDER BY seq DESC LIMIT 1")[0][1].as<std::string>(),
      action::kAuditAnchorMismatch);
}

TEST_F(AuditChainPgTest, AnAnchorOfAnotherChainOrKeyIsRefused) {
  log_->ConfigureAnchors({.instance_id = "kms-1"});
  auto anchor = log_->Anchor();
  ASSERT_TRUE(anchor.ok()) << anchor.status();
  const std::string line = FormatAuditAnchor(TestChain(), *anchor);
  // Another service's format does not parse; another key's MAC does not verify.
  EXPECT_EQ(ParseAuditAnchor(TestChain("mtms"), line).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log_->VerifyWithAnchorText("rkl-kms-audit-anchor v1 junk").status().code(),
            absl::StatusCode::kInvalidArgument);
  PgAuditLog other(*pool_, crypto::RandomSecret(kAuditMacKeySize), TestChain());
  EXPECT_EQ(other.VerifyWithAnchorText(line).status().code(), absl::StatusCode::kUnauthenticated);
  // And a chain is not verified with another key: every record fails.
  Write(*log_, 1, 2);
  auto v = other.Verify(nullptr);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->intact);
  EXPECT_EQ(v->first_broken_seq, 1u);
}

TEST_F(AuditChainPgTest, ATamperedRecordOfEitherSpellingBreaksTheChain) {
  // A chain sealed before the dotted vocabulary holds the older spelling under a MAC that
  // still verifies; it must break the chain as the current one does.
  for (const char* tampered : {action::kAuditRecordTampered, action::kLegacyAuditRecordTampered}) {
    SCOPED_TRACE(tampered);
    Sql("TRUNCATE audit, audit_pending");
    PgAuditLog log(*pool_, key_, TestChain());
    Write(log, 1, 2);
    AuditEvent e = Event(3);
    e.action = tampered;
    ASSERT_NO_FATAL_FAILURE(WriteEvent(log, e));
    Write(log, 4, 1);
    auto v = log.Verify(nullptr);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_FALSE(v->intact);
    EXPECT_EQ(v->first_broken_seq, 3u);
    EXPECT_THAT(v->finding, HasSubstr("replaces a tampered pending record"));
  }
}

TEST_F(AuditChainPgTest, ATamperedPendingRecordIsChainedAsTampered) {
  Write(*log_, 1, 3);
  Sql("UPDATE audit_pending SET detail = 'nothing happened' WHERE sn = 'SN2'");
  // Before sealing, it is found by its own MAC...
  EXPECT_FALSE(Verify().intact);
  // ...and sealed, it is chained as a record saying so, its content not trusted.
  EXPECT_EQ(Sql("SELECT action FROM audit WHERE seq = 2")[0][0].as<std::string>(),
            action::kAuditRecordTampered);
  AuditVerification v = Verify();
  EXPECT_FALSE(v.intact);
  EXPECT_EQ(v.first_broken_seq, 2u);
}

TEST_F(AuditChainPgTest, TwoReplicasWritingAndSealingAtOnceBuildOneChain) {
  db::ConnectionPool other_pool(db::PoolOptions{.dsn = database().dsn(), .max_size = 8});
  PgAuditLog replica(other_pool, key_, TestChain());
  constexpr int kThreads = 4, kPerThread = 40;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      PgAuditLog& log = t % 2 == 0 ? *log_ : replica;
      for (int i = 0; i < kPerThread; ++i) {
        const int n = t * kPerThread + i;
        // Every third write also seals, so sealers race each other and the writers.
        absl::Status s = n % 3 == 0 ? log.Seal().status() : absl::OkStatus();
        EXPECT_TRUE(s.ok()) << s;
        EXPECT_TRUE(log.Append(Event(n)).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  AuditVerification v = Verify();
  EXPECT_TRUE(v.intact) << v.finding;
  EXPECT_EQ(v.records_checked, static_cast<uint64_t>(kThreads * kPerThread));
  pqxx::row r = Sql("SELECT count(*), min(seq), max(seq), count(DISTINCT sn) FROM audit")[0];
  EXPECT_EQ(r[0].as<int>(), kThreads * kPerThread);
  EXPECT_EQ(r[1].as<int>(), 1);
  EXPECT_EQ(r[2].as<int>(), kThreads * kPerThread);
  EXPECT_EQ(r[3].as<int>(), kThreads * kPerThread);
}

// Not a check of speed (nothing here depends on timing): it prints what a record costs the
// writer in the pending design, next to the serialized design (an advisory lock held from
// reading the chain's head until the commit) that docs/kms.md compares it with.
TEST_F(AuditChainPgTest, MeasureAppendCostPerRecord) {
  constexpr int kThreads = 8, kPerThread = 60;
  auto run = [&](auto append) {
    std::vector<std::thread> threads;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) append(t * kPerThread + i);
      });
    }
    for (auto& t : threads) t.join();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
               .count() /
           (kThreads * kPerThread);
  };
  const double pending_us = run([&](int n) { ASSERT_TRUE(log_->Append(Event(n)).ok()); });
  const double seal_start =
      static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count());
  ASSERT_TRUE(log_->Seal().ok());
  const double seal_us =
      (static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::steady_clock::now().time_since_epoch())
                               .count()) -
       seal_start) /
      (kThreads * kPerThread);
  const double serialized_us = run([&](int n) {
    absl::Status s = db::RunInTransaction(*pool_, [&](pqxx::work& tx) {
      db::Exec(tx, "SELECT pg_advisory_xact_lock(1, 1)");
      pqxx::result head = db::Exec(tx, "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1");
      const int64_t seq = head.empty() ? 1 : head[0][0].as<int64_t>() + 1;
      AuditEvent e = Event(n);
      Bytes canonical = CanonicalAuditRecord(static_cast<uint64_t>(seq), e);
      auto mac = HmacSha256(key_, canonical);
      if (!mac.ok()) return mac.status();
      db::Exec(tx,
               "INSERT INTO audit (seq, at_ms, actor, action, sn, detail, result, mac) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
               seq, e.at_ms, e.actor, e.action, e.sn, e.detail, e.result,
               pqxx::binarystring(mac->data(), mac->size()));
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;
  });
  std::printf(
      "audit append, %d writers: pending (own transaction) %.0f us/record wall, sealing "
      "%.0f us/record; serialized (advisory lock across commit) %.0f us/record wall\n",
      kThreads, pending_us, seal_us, serialized_us);
  RecordProperty("pending_us_per_record", static_cast<int>(pending_us));
  RecordProperty("seal_us_per_record", static_cast<int>(seal_us));
  RecordProperty("serialized_us_per_record", static_cast<int>(serialized_us));
}

TEST(AuditMacKeyTest, TheKeyFileIsReadLikeTheLmkFile) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / absl::StrCat("rkl-audit-key-", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "audit.key").string();
  {
    std::ofstream out(path);
    out << std::string(64, 'a') << "\n";
  }
  ::chmod(path.c_str(), 0644);
  auto loose = LoadAuditMacKeyFile(path);
  EXPECT_EQ(loose.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(loose.status().message(), HasSubstr("audit.mac_key_file"));
  EXPECT_THAT(loose.status().message(), HasSubstr("chmod 600"));
  ::chmod(path.c_str(), 0600);
  auto key = LoadAuditMacKeyFile(path);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->size(), kAuditMacKeySize);
  {
    std::ofstream out(path);
    out << "ZZZZ" << std::string(60, 'a');
  }
  auto bad = LoadAuditMacKeyFile(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), ::testing::Not(HasSubstr("ZZZZ")));
  std::filesystem::remove_all(dir);
}

TEST_F(AuditChainPgTest, TheKeyIsBoundToTheDatabaseByItsKcv) {
  ASSERT_TRUE(BindAuditMacKey(*pool_, TestChain(), key_, "/k", 1).ok());
  ASSERT_TRUE(BindAuditMacKey(*pool_, TestChain(), key_, "/k", 2).ok());
  absl::Status other =
      BindAuditMacKey(*pool_, TestChain(), crypto::RandomSecret(kAuditMacKeySize), "/other", 3);
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(other.message(), HasSubstr(*AuditMacKeyKcv(key_)));
  EXPECT_THAT(other.message(), HasSubstr("/other"));
}

}  // namespace
}  // namespace rkl::audit
