// PostgreSQL tier: the same conformance suite as mtms_test, over PgMtmsRepository on a
// fresh database with the embedded migrations, plus what only a real database shows.

#include <pqxx/pqxx>

#include "mtms_db_roles.h"
#include "mtms_pg_repository.h"
#include "mtms_suite.h"
#include "rkl/db/connection_pool.h"
#include "rkl/mtms/migrations.h"
#include "rkl/testing/service_database.h"

namespace rkl::mtms::testing {
namespace {

// A work key record as the schema tests install it (serial 0A1B2C, HSM key 77).
WorkKeyRecord TestWorkKey() {
  return WorkKeyRecord{.serial_hex = "0A1B2C",
                       .hsm_id = "hsm-x",
                       .hsm_key_index = 77,
                       .public_key_der = Bytes{1, 2, 3},
                       .certificate_pem = "pem",
                       .terminal_root_pem = "root",
                       .created_at_ms = 1};
}

struct PgBackend final : public MtmsBackend {
  static std::unique_ptr<MtmsBackend> Create() {
    // The repositories run as the runtime role, with only the privileges MTMS is granted.
    auto db = rkl::testing::ServiceDatabase::Create(
        {.migrations = rkl::mtms::Migrations(), .grants = kMtmsRuntimeGrants});
    if (!db.ok()) {
      ADD_FAILURE() << db.status();
      return nullptr;
    }
    auto backend = std::make_unique<PgBackend>();
    backend->db.emplace(*std::move(db));
    return backend;
  }

  // Each replica has its own pool, as separate processes would.
  MtmsRepository& Replica(int i) override {
    while (static_cast<int>(repositories.size()) <= i) {
      pools.push_back(db->NewPool(4));
      repositories.push_back(
          std::make_unique<PgMtmsRepository>(*pools.back(), crypto::SecretBytes(32)));
    }
    return *repositories[i];
  }

  void OverwritePackage(const std::string& id, const Bytes& package) override {
    pqxx::connection conn(db->dsn());
    pqxx::work tx(conn);
    tx.exec_params("UPDATE sn_key_mtms SET package = $2 WHERE submission_id = $1", id,
                   pqxx::binarystring(package.data(), package.size()));
    tx.commit();
  }

  pqxx::result Sql(const std::string& statement) { return db->Sql(statement); }

  std::optional<rkl::testing::ServiceDatabase> db;
  std::vector<std::unique_ptr<db::ConnectionPool>> pools;
  std::vector<std::unique_ptr<PgMtmsRepository>> repositories;
};

const rkl::testing::Implementation<MtmsBackend> kPostgres{"Postgres", &PgBackend::Create};

INSTANTIATE_TEST_SUITE_P(Postgres, MtmsSuite, ::testing::Values(kPostgres),
                         rkl::testing::ImplementationName());

// What only a real database shows: the suite's set-up, on PostgreSQL alone.
class MtmsSchemaPgTest : public MtmsSuite {
 protected:
  PgBackend& pg() { return static_cast<PgBackend&>(*backend_); }
};

INSTANTIATE_TEST_SUITE_P(Postgres, MtmsSchemaPgTest, ::testing::Values(kPostgres),
                         rkl::testing::ImplementationName());

// The outbox counts of the metrics (PgMtmsRepository::CountSubmissions, read at every
// scrape) can be answered from the index on (state, received_at_ms) alone, never by reading
// every package row. (A table this small is cheaper to scan, so scans are ruled out here to
// see that the index serves the statement.)
TEST_P(MtmsSchemaPgTest, OutboxCountsAreAnIndexOnlyScan) {
  ASSERT_TRUE(Submit({.sn = "SN-PLAN"}).ok());
  pqxx::connection conn(pg().db->dsn());
  pqxx::nontransaction tx(conn);
  tx.exec("VACUUM ANALYZE sn_key_mtms");
  tx.exec("SET enable_seqscan = off");
  std::string plan;
  for (const pqxx::row& row :
       tx.exec("EXPLAIN SELECT state, count(*), min(received_at_ms) FROM sn_key_mtms"
               " GROUP BY state")) {
    plan += row[0].as<std::string>() + "\n";
  }
  EXPECT_THAT(plan, HasSubstr("Index Only Scan using sn_key_mtms_by_state")) << plan;
}

TEST_P(MtmsSchemaPgTest, ReplayIsRefusedByTheDatabaseConstraintItself) {
  auto receipt = Submit({.sn = "SN-CONSTRAINT"});
  ASSERT_TRUE(receipt.ok());
  // Bypassing the code: a second row with the same (operator_id, nonce) cannot exist.
  EXPECT_THROW(pg().Sql("INSERT INTO sn_key_mtms (submission_id, sn, operator_id, nonce,"
                        " package, signature, operator_certificate_pem,"
                        " operator_certificate_serial, work_certificate_serial, ctk_pu,"
                        " algorithm_code, created_at_ms, received_at_ms, state,"
                        " next_attempt_at_ms)"
                        " SELECT 'other', sn, operator_id, nonce, package, signature,"
                        " operator_certificate_pem, operator_certificate_serial,"
                        " work_certificate_serial, ctk_pu, algorithm_code, created_at_ms,"
                        " received_at_ms, 'RECEIVED', next_attempt_at_ms FROM sn_key_mtms"),
               pqxx::unique_violation);
}

TEST_P(MtmsSchemaPgTest, AtMostOneCurrentWorkKeyIsAConstraint) {
  EXPECT_THROW(pg().Sql("UPDATE work_keys SET state = 'CURRENT'"
                        " WHERE state = 'CURRENT'; INSERT INTO work_keys (serial_hex, hsm_id,"
                        " hsm_key_index, public_key_der, certificate_pem, terminal_root_pem,"
                        " state, created_at_ms) VALUES ('AB', 'h', 999, '', '', '',"
                        " 'CURRENT', 0)"),
               pqxx::unique_violation);
}

TEST_P(MtmsSchemaPgTest, IntakeStatementWritesOnlyAnAcceptedPackageWithItsAuditAndOperator) {
  // The intake is one statement: each refusal must leave no trace, an accepted package
  // exactly its row, its audit entry and its operator's first sight.
  MtmsRepository& repo = backend_->Replica(0);
  auto count = [&](const std::string& sql) { return pg().Sql(sql)[0][0].as<int64_t>(); };
  WorkKeyRecord key = TestWorkKey();
  ASSERT_TRUE(repo.InstallWorkKey(key, /*rotate=*/true, AuditEntry{.action = "test_install"}).ok());
  SubmissionRecord row{.submission_id = "sub-intake-1",
                       .sn = "SN-INTAKE",
                       .operator_id = "op-intake",
                       .nonce = Bytes(16, 0x42),
                       .package = Bytes{9},
                       .signature = Bytes{8},
                       .operator_certificate_pem = "cert",
                       .operator_certificate_serial = "0F",
                       .work_certificate_serial = "FFFF",
                       .ctk_pu = Bytes{7},
                       .algorithm_code = 17,
                       .created_at_ms = 5,
                       .received_at_ms = 6};
  const AuditEntry audit{.at_ms = 6,
                         .actor = "operator:op-intake",
                         .action = "test_intake",
                         .sn = "SN-INTAKE",
                         .detail = "d"};
  const std::string audits =
      "SELECT count(*) FROM (SELECT action FROM audit UNION ALL SELECT action FROM "
      "audit_pending) a WHERE action = 'test_intake'";
  const std::string rows = "SELECT count(*) FROM sn_key_mtms WHERE sn = 'SN-INTAKE'";
  const std::string seen = "SELECT count(*) FROM operators_seen WHERE operator_id = 'op-intake'";

  auto outcome = repo.InsertSubmission(row, audit);  // no such work key
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, InsertOutcome::kUnknownWorkKey);
  EXPECT_EQ(count(rows) + count(audits) + count(seen), 0);

  row.work_certificate_serial = key.serial_hex;
  outcome = repo.InsertSubmission(row, audit);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, InsertOutcome::kInserted);
  EXPECT_EQ(count(rows), 1);
  EXPECT_EQ(count(audits), 1);
  EXPECT_EQ(count(seen), 1);

  row.submission_id = "sub-intake-2";  // same operator and nonce: a replay
  outcome = repo.InsertSubmission(row, audit);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, InsertOutcome::kReplay);
  EXPECT_EQ(count(rows), 1);
  EXPECT_EQ(count(audits), 1);

  pg().Sql(
      "UPDATE work_keys SET state = 'RETIRED', retired_at_ms = 7 "
      "WHERE serial_hex = '0A1B2C'");
  row.submission_id = "sub-intake-3";
  row.nonce = Bytes(16, 0x43);
  outcome = repo.InsertSubmission(row, audit);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, InsertOutcome::kRetiredWorkKey);
  EXPECT_EQ(count(rows), 1);
  EXPECT_EQ(count(audits), 1);
}

TEST_P(MtmsSchemaPgTest, ClaimedIntakeStoresTheRowLeasedWithItsFactsOrNothing) {
  // Intake with a claim is still one statement: an accepted package is stored leased to the
  // claim and reports its work key and newer sibling; a refusal stores, audits and leases
  // nothing. The work key's state is the one the statement reads, not what intake assumed.
  MtmsRepository& repo = backend_->Replica(0);
  auto count = [&](const std::string& sql) { return pg().Sql(sql)[0][0].as<int64_t>(); };
  WorkKeyRecord old_key = TestWorkKey();
  WorkKeyRecord new_key = old_key;
  new_key.serial_hex = "0D0E";
  new_key.hsm_key_index = 78;
  ASSERT_TRUE(repo.InstallWorkKey(old_key, true, AuditEntry{.action = "test_install"}).ok());
  ASSERT_TRUE(repo.InstallWorkKey(new_key, true, AuditEntry{.action = "test_install"}).ok());
  SubmissionRecord row{.submission_id = "sub-claim-1",
                       .sn = "SN-CLAIM",
                       .operator_id = "op-claim",
                       .nonce = Bytes(16, 0x51),
                       .package = Bytes{9},
                       .signature = Bytes{8},
                       .operator_certificate_pem = "cert",
                       .operator_certificate_serial = "0F",
                       .work_certificate_serial = "0A1B2C",
                       .ctk_pu = Bytes{7},
                       .algorithm_code = 17,
                       .created_at_ms = 50,
                       .received_at_ms = 60};
  const AuditEntry audit{.at_ms = 60, .actor = "op", .action = "test_claimed", .sn = "SN-CLAIM"};
  const std::string audits =
      "SELECT count(*) FROM (SELECT action FROM audit UNION ALL SELECT action FROM "
      "audit_pending) a WHERE action = 'test_claimed'";
  const std::string rows = "SELECT count(*) FROM sn_key_mtms WHERE sn = 'SN-CLAIM'";

  auto first = repo.Intake(row, audit, IntakeClaim{.claim_token = "tok-1", .lease_until_ms = 1000});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->outcome, InsertOutcome::kInserted);
  EXPECT_EQ(first->facts.work_key_state, WorkKeyState::kPrevious);
  EXPECT_EQ(first->facts.work_key_index, 77u);
  EXPECT_FALSE(first->facts.newer_sibling);
  EXPECT_EQ(count("SELECT count(*) FROM sn_key_mtms WHERE submission_id = 'sub-claim-1'"
                  " AND claimed_by = 'tok-1' AND claimed_until_ms = 1000"),
            1);
  // An older package for the SN, claimed too: the first one is its newer sibling.
  row.submission_id = "sub-claim-0";
  row.nonce = Bytes(16, 0x52);
  row.created_at_ms = 40;
  auto older = repo.Intake(row, audit, IntakeClaim{.claim_token = "tok-0", .lease_until_ms = 1000});
  ASSERT_TRUE(older.ok()) << older.status();
  EXPECT_EQ(older->outcome, InsertOutcome::kInserted);
  EXPECT_TRUE(older->facts.newer_sibling);
  EXPECT_EQ(count(rows), 2);
  EXPECT_EQ(count(audits), 2);

  // Leased: no claim takes them before 1000; at 1000 one does, with the same facts.
  auto early = repo.ClaimDue("tok-late", 999, 5000, 10);
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_TRUE(early->empty());
  auto late = repo.ClaimDue("tok-late", 1000, 5000, 10);
  ASSERT_TRUE(late.ok()) << late.status();
  ASSERT_EQ(late->size(), 2u);
  for (const SubmissionRecord& r : *late) {
    ASSERT_TRUE(r.claim.has_value());
    EXPECT_EQ(r.claim->work_key_state, WorkKeyState::kPrevious);
    EXPECT_EQ(r.claim->work_key_index, 77u);
    EXPECT_EQ(r.claim->newer_sibling, r.submission_id == "sub-claim-0");
  }

  // The key is retired after intake last saw it PREVIOUS: refused, nothing stored or leased.
  pg().Sql(
      "UPDATE work_keys SET state = 'RETIRED', retired_at_ms = 70 WHERE serial_hex = '0A1B2C'");
  row.submission_id = "sub-claim-2";
  row.nonce = Bytes(16, 0x53);
  row.created_at_ms = 80;
  auto retired =
      repo.Intake(row, audit, IntakeClaim{.claim_token = "tok-2", .lease_until_ms = 1000});
  ASSERT_TRUE(retired.ok()) << retired.status();
  EXPECT_EQ(retired->outcome, InsertOutcome::kRetiredWorkKey);
  // An unknown serial and a replay are refused the same way.
  row.work_certificate_serial = "0BAD";
  auto unknown =
      repo.Intake(row, audit, IntakeClaim{.claim_token = "tok-3", .lease_until_ms = 1000});
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(unknown->outcome, InsertOutcome::kUnknownWorkKey);
  row.work_certificate_serial = "0D0E";
  row.nonce = Bytes(16, 0x51);  // sub-claim-1's
  auto replay =
      repo.Intake(row, audit, IntakeClaim{.claim_token = "tok-4", .lease_until_ms = 1000});
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_EQ(replay->outcome, InsertOutcome::kReplay);
  EXPECT_EQ(count(rows), 2);
  EXPECT_EQ(count(audits), 2);
  EXPECT_EQ(count("SELECT count(*) FROM sn_key_mtms WHERE claimed_by IN ('tok-2', 'tok-3',"
                  " 'tok-4')"),
            0);
  EXPECT_EQ(count("SELECT count(*) FROM sn_key_mtms WHERE claimed_by = 'tok-late'"), 2);
}

TEST_P(MtmsSchemaPgTest, AFinishWritesItsAuditEntryOnlyWhenTheRowWasStillClaimed) {
  MtmsRepository& repo = backend_->Replica(0);
  auto count = [&](const std::string& sql) { return pg().Sql(sql)[0][0].as<int64_t>(); };
  auto receipt = Submit({.sn = "SN-FINISH"});
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  auto claimed = repo.ClaimDue("token-a", INT64_MAX / 2, INT64_MAX / 2 + 1000, 10);
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_EQ(claimed->size(), 1u);
  const std::string id = claimed->front().submission_id;
  const std::string audits =
      "SELECT count(*) FROM (SELECT action FROM audit UNION ALL SELECT action FROM "
      "audit_pending) a WHERE action = 'test_finish'";
  const AuditEntry audit{.at_ms = 1, .actor = "mtms", .action = "test_finish", .sn = "SN-FINISH"};
  // Another claimant's token finishes nothing and audits nothing.
  auto other = repo.FinishForwarded(id, "token-b", 2, audit);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(*other);
  EXPECT_EQ(count(audits), 0);
  auto mine = repo.FinishForwarded(id, "token-a", 2, audit);
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_TRUE(*mine);
  EXPECT_EQ(count(audits), 1);
  // Finished once: a second finish (a rejection now) changes and audits nothing.
  auto again = repo.FinishRejected(id, "token-a", "late", audit);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(*again);
  EXPECT_EQ(count(audits), 1);
  EXPECT_EQ(count("SELECT count(*) FROM sn_key_mtms WHERE state = 'FORWARDED'"), 1);
}

TEST_P(MtmsSchemaPgTest, OperatorsSeenIsWrittenOnFirstSightAndAtMostOnceAMinute) {
  // xmin names the transaction that last wrote a row version: it changes whenever the row
  // is written, and only then.
  auto seen = [&](const std::string& op) {  // op: a fixed operator id of this test
    pqxx::result r = pg().Sql(
        "SELECT xmin::text, first_seen_at_ms, last_seen_at_ms, certificate_serial"
        " FROM operators_seen WHERE operator_id = '" +
        op + "'");
    EXPECT_EQ(r.size(), 1u) << op;
    struct Seen {
      std::string xmin;
      int64_t first = 0, last = 0;
      std::string serial;
    };
    if (r.size() != 1) return Seen{};
    return Seen{r[0][0].as<std::string>(), r[0][1].as<int64_t>(), r[0][2].as<int64_t>(),
                r[0][3].as<std::string>()};
  };
  const int64_t t0 = clock_.NowUnixMs();
  ASSERT_TRUE(Submit({.sn = "SN-OPS-0"}).ok());
  const auto first = seen("alice");
  EXPECT_EQ(first.first, t0);
  EXPECT_EQ(first.last, t0);
  EXPECT_EQ(first.serial, alice_->certificate.SerialHex());
  // Many packages within the minute: the row is not written again.
  for (int i = 1; i < 20; ++i) {
    clock_.Advance(absl::Seconds(2));
    ASSERT_TRUE(Submit({.sn = absl::StrCat("SN-OPS-", i)}).ok());
  }
  auto after = seen("alice");
  EXPECT_EQ(after.xmin, first.xmin) << "operators_seen row rewritten by a package";
  EXPECT_EQ(after.first, t0);
  EXPECT_EQ(after.last, t0);
  // Once last_seen is a minute old, the next package moves it (once).
  clock_.Advance(absl::Seconds(30));  // t0 + 68 s
  ASSERT_TRUE(Submit({.sn = "SN-OPS-20"}).ok());
  after = seen("alice");
  EXPECT_NE(after.xmin, first.xmin);
  EXPECT_EQ(after.first, t0);
  EXPECT_EQ(after.last, t0 + 68000);
  const std::string moved = after.xmin;
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(Submit({.sn = "SN-OPS-21"}).ok());
  after = seen("alice");
  EXPECT_EQ(after.xmin, moved);
  EXPECT_EQ(after.last, t0 + 68000);
  // Another operator has a row of its own.
  OperatorCard bob = authority_->IssueOperator("bob");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Submit({.sn = absl::StrCat("SN-BOB-", i)}, &bob).ok());
  EXPECT_EQ(seen("bob").first, clock_.NowUnixMs());

  // The package counts come from the submissions themselves, and are right.
  pqxx::result counts = pg().Sql(
      "SELECT o.operator_id, count(s.submission_id) FROM operators_seen o"
      " LEFT JOIN sn_key_mtms s ON s.operator_id = o.operator_id"
      " AND s.operator_certificate_serial = o.certificate_serial"
      " GROUP BY o.operator_id ORDER BY o.operator_id");
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts[0][0].as<std::string>(), "alice");
  EXPECT_EQ(counts[0][1].as<int64_t>(), 22);
  EXPECT_EQ(counts[1][0].as<std::string>(), "bob");
  EXPECT_EQ(counts[1][1].as<int64_t>(), 3);
  // No counter is left behind to go stale (migration 002).
  EXPECT_EQ(pg().Sql("SELECT count(*) FROM information_schema.columns"
                     " WHERE table_name = 'operators_seen' AND column_name = 'packages'")[0][0]
                .as<int>(),
            0);
}

TEST_P(MtmsSchemaPgTest, SubmissionsOfOneOperatorDoNotWaitForItsOperatorsSeenRow) {
  ASSERT_TRUE(Submit({.sn = "SN-LOCK-0"}).ok());  // alice's operators_seen row exists now
  // Another transaction holds alice's row lock until it ends, as a concurrent submission
  // did when every package updated the row...
  pqxx::connection holder(pg().db->dsn());
  pqxx::work locked(holder);
  ASSERT_EQ(
      locked.exec("SELECT 1 FROM operators_seen WHERE operator_id = 'alice' FOR UPDATE").size(),
      1u);
  // ...and intake goes through regardless. lock_timeout turns a wait on that lock into an
  // error, so a regression fails here instead of hanging.
  db::ConnectionPool pool(
      {.dsn = pg().db->runtime_dsn() + " options='-c lock_timeout=5s'", .max_size = 2});
  PgMtmsRepository repository(pool, crypto::SecretBytes(32));
  auto core = MakeCore(repository);
  for (int i = 1; i <= 5; ++i) {
    auto r = core->SubmitTransportKey(
        MakeSubmission({.sn = absl::StrCat("SN-LOCK-", i)}, *alice_, work_, clock_), "");
    ASSERT_TRUE(r.ok()) << r.status();
  }
  locked.abort();
  EXPECT_EQ(
      pg().Sql("SELECT count(*) FROM sn_key_mtms WHERE operator_id = 'alice'")[0][0].as<int>(), 6);
}

TEST_P(MtmsSchemaPgTest, MigrationsAreIdempotentAtRestart) {
  auto again = pg().db->Migrate();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0);
}

}  // namespace
}  // namespace rkl::mtms::testing
