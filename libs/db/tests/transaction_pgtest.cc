#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <thread>

#include "rkl/db/errors.h"
#include "rkl/db/transaction.h"
#include "rkl/testing/service_database.h"

namespace rkl::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class TransactionTest : public rkl::testing::PgFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    Sql("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL UNIQUE,"
        " qty integer NOT NULL CHECK (qty >= 0))");
    Sql("CREATE TABLE item_notes (item_id bigint NOT NULL REFERENCES items (id), note text)");
    Sql("CREATE TABLE counter (id int PRIMARY KEY, value bigint NOT NULL)");
    Sql("INSERT INTO counter VALUES (1, 0)");
    pool_.emplace(PoolOptions{.dsn = database().dsn(), .max_size = 4});
  }

  int64_t Count(const std::string& table) {
    return Sql("SELECT count(*) FROM " + table)[0][0].as<int64_t>();
  }

  std::optional<ConnectionPool> pool_;
};

TEST_F(TransactionTest, CommitsWhenFnSucceeds) {
  absl::Status s = RunInTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 1, "one", 5);
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(Count("items"), 1);
}

TEST_F(TransactionTest, RollsBackAndReturnsFnErrorWithoutRetry) {
  TransactionStats stats;
  absl::Status s =
      RunInTransaction(*pool_,
                       [](pqxx::work& tx) {
                         tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 1, "one", 5);
                         return absl::NotFoundError("terminal not registered");
                       },
                       {.stats = &stats});
  EXPECT_EQ(s, absl::NotFoundError("terminal not registered"));
  EXPECT_EQ(stats.attempts, 1);
  EXPECT_EQ(Count("items"), 0);
}

TEST_F(TransactionTest, ReturnsFnValue) {
  absl::StatusOr<int64_t> v =
      RunInTransaction(*pool_, [](pqxx::work& tx) -> absl::StatusOr<int64_t> {
        return tx.exec_params1("SELECT $1::bigint * 2", 21)[0].as<int64_t>();
      });
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 42);
}

TEST_F(TransactionTest, UniqueViolationIsAlreadyExistsWithoutTheValue) {
  Sql("INSERT INTO items VALUES (1, 'secret-label-4711', 1)");
  absl::Status s = RunInTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 2, "secret-label-4711", 1);
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr("items_label_key"));
  EXPECT_THAT(s.message(), Not(HasSubstr("secret-label-4711")));
}

TEST_F(TransactionTest, ForeignKeyAndCheckViolationsAreFailedPrecondition) {
  absl::Status fk = RunInTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("INSERT INTO item_notes VALUES ($1, $2)", 99, "orphan");
    return absl::OkStatus();
  });
  EXPECT_EQ(fk.code(), absl::StatusCode::kFailedPrecondition) << fk;
  absl::Status check = RunInTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 1, "neg", -1);
    return absl::OkStatus();
  });
  EXPECT_EQ(check.code(), absl::StatusCode::kFailedPrecondition) << check;
}

TEST_F(TransactionTest, OtherErrorsAreInternalWithSqlStateButNoValue) {
  absl::Status s = RunInTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("SELECT $1::integer", "card-4111111111111111");
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_THAT(s.message(), HasSubstr("SQLSTATE 22P02"));
  EXPECT_THAT(s.message(), Not(HasSubstr("4111")));
}

TEST_F(TransactionTest, SerializableIsolationIsApplied) {
  absl::StatusOr<std::string> level =
      RunInTransaction(*pool_,
                       [](pqxx::work& tx) -> absl::StatusOr<std::string> {
                         return tx.exec1("SHOW transaction_isolation")[0].as<std::string>();
                       },
                       {.isolation = IsolationLevel::kSerializable});
  ASSERT_TRUE(level.ok()) << level.status();
  EXPECT_EQ(*level, "serializable");
  absl::StatusOr<std::string> default_level =
      RunInTransaction(*pool_, [](pqxx::work& tx) -> absl::StatusOr<std::string> {
        return tx.exec1("SHOW transaction_isolation")[0].as<std::string>();
      });
  ASSERT_TRUE(default_level.ok()) << default_level.status();
  EXPECT_EQ(*default_level, "read committed");
}

TEST_F(TransactionTest, ReadOnlyTransactionRejectsWrites) {
  absl::Status s = RunInReadOnlyTransaction(*pool_, [](pqxx::work& tx) {
    tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 1, "one", 5);
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_THAT(s.message(), HasSubstr("25006"));
  EXPECT_EQ(Count("items"), 0);
}

TEST_F(TransactionTest, ForcedSerializationFailureIsRetriedAndSucceeds) {
  Sql("CREATE FUNCTION force_serialization_failure() RETURNS void LANGUAGE plpgsql AS $$"
      " BEGIN RAISE EXCEPTION 'forced conflict' USING ERRCODE = '40001'; END $$");
  TransactionStats stats;
  int calls = 0;
  absl::Status s =
      RunInTransaction(*pool_,
                       [&](pqxx::work& tx) {
                         ++calls;
                         tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", calls, "try", 1);
                         if (calls < 3) tx.exec("SELECT force_serialization_failure()");
                         return absl::OkStatus();
                       },
                       {.max_attempts = 5, .stats = &stats});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(stats.attempts, 3);
  // Only the successful attempt's row survives: the failed ones were rolled back.
  EXPECT_EQ(Count("items"), 1);
  EXPECT_EQ(Sql("SELECT id FROM items")[0][0].as<int>(), 3);
}

TEST_F(TransactionTest, RetriesAreBoundedAndEndInAborted) {
  Sql("CREATE FUNCTION force_serialization_failure() RETURNS void LANGUAGE plpgsql AS $$"
      " BEGIN RAISE EXCEPTION 'forced conflict' USING ERRCODE = '40001'; END $$");
  TransactionStats stats;
  absl::Status s = RunInTransaction(*pool_,
                                    [](pqxx::work& tx) {
                                      tx.exec("SELECT force_serialization_failure()");
                                      return absl::OkStatus();
                                    },
                                    {.max_attempts = 3, .stats = &stats});
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_THAT(s.message(), HasSubstr("40001"));
  EXPECT_EQ(stats.attempts, 3);
}

TEST_F(TransactionTest, ConcurrentSerializableUpdatesConflictAndBothSucceedByRetrying) {
  // Both transactions read the counter before either writes; under SERIALIZABLE the
  // second writer must fail with 40001, and its retry sees the first one's update.
  std::latch both_read(2);
  std::atomic<int> total_attempts{0};
  auto increment = [&] {
    TransactionStats stats;
    int attempt = 0;
    absl::Status s = RunInTransaction(
        *pool_,
        [&](pqxx::work& tx) {
          ++attempt;
          int64_t value =
              tx.exec_params1("SELECT value FROM counter WHERE id = $1", 1)[0].as<int64_t>();
          if (attempt == 1) both_read.arrive_and_wait();
          tx.exec_params("UPDATE counter SET value = $1 WHERE id = $2", value + 1, 1);
          return absl::OkStatus();
        },
        {.isolation = IsolationLevel::kSerializable, .max_attempts = 5, .stats = &stats});
    EXPECT_TRUE(s.ok()) << s;
    total_attempts += stats.attempts;
  };
  std::thread a(increment), b(increment);
  a.join();
  b.join();
  EXPECT_EQ(Sql("SELECT value FROM counter WHERE id = 1")[0][0].as<int64_t>(), 2);
  EXPECT_EQ(total_attempts.load(), 3);  // exactly one retry
}

TEST_F(TransactionTest, LostConnectionIsRetriedOnAFreshConnection) {
  TransactionStats stats;
  std::vector<int> pids;
  absl::Status s = RunInTransaction(
      *pool_,
      [&](pqxx::work& tx) {
        pids.push_back(tx.exec1("SELECT pg_backend_pid()")[0].as<int>());
        if (pids.size() == 1) tx.exec("SELECT pg_terminate_backend(pg_backend_pid())");
        tx.exec_params("INSERT INTO items VALUES ($1, $2, $3)", 1, "after-reconnect", 1);
        return absl::OkStatus();
      },
      {.stats = &stats});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(stats.attempts, 2);
  ASSERT_EQ(pids.size(), 2u);
  EXPECT_NE(pids[0], pids[1]);
  EXPECT_EQ(Count("items"), 1);
}

TEST_F(TransactionTest, AutocommitReadRunsWithoutATransactionBlock) {
  // In autocommit the statement starts its own transaction, so its transaction and statement
  // timestamps are equal; after a separate BEGIN (RunInReadOnlyTransaction) they differ by
  // at least one round trip.
  const char* kSql = "SELECT now() = statement_timestamp()";
  absl::StatusOr<bool> single =
      RunAutocommitRead(*pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
        return tx.exec1(kSql)[0].as<bool>();
      });
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_TRUE(*single);
  absl::StatusOr<bool> in_tx = RunInReadOnlyTransaction(
      *pool_, [&](pqxx::work& tx) -> absl::StatusOr<bool> { return tx.exec1(kSql)[0].as<bool>(); });
  ASSERT_TRUE(in_tx.ok()) << in_tx.status();
  EXPECT_FALSE(*in_tx);
}

TEST_F(TransactionTest, AutocommitReadReturnsFnErrorWithoutRetry) {
  TransactionStats stats;
  absl::StatusOr<int> r =
      RunAutocommitRead(*pool_,
                        [](pqxx::nontransaction& tx) -> absl::StatusOr<int> {
                          if (tx.exec("SELECT 1 FROM items WHERE id = 7").empty()) {
                            return absl::NotFoundError("no such item");
                          }
                          return 7;
                        },
                        {.stats = &stats});
  EXPECT_EQ(r.status(), absl::NotFoundError("no such item"));
  EXPECT_EQ(stats.attempts, 1);
}

TEST_F(TransactionTest, AutocommitReadIsRetriedAfterALostConnection) {
  TransactionStats stats;
  std::vector<int> pids;
  absl::StatusOr<int64_t> r = RunAutocommitRead(
      *pool_,
      [&](pqxx::nontransaction& tx) -> absl::StatusOr<int64_t> {
        pids.push_back(tx.exec1("SELECT pg_backend_pid()")[0].as<int>());
        if (pids.size() == 1) tx.exec("SELECT pg_terminate_backend(pg_backend_pid())");
        return tx.exec1("SELECT value FROM counter WHERE id = 1")[0].as<int64_t>();
      },
      {.stats = &stats});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 0);
  EXPECT_EQ(stats.attempts, 2);
  ASSERT_EQ(pids.size(), 2u);
  EXPECT_NE(pids[0], pids[1]);
}

TEST_F(TransactionTest, AutocommitWriteCommitsOneStatementAndReturnsItsValue) {
  // The CTE writes two tables; both rows are there when the call returns.
  TransactionStats stats;
  absl::StatusOr<int64_t> r = RunAutocommitWrite(
      *pool_,
      [](OneStatement& stmt) -> absl::StatusOr<int64_t> {
        return stmt
            .Exec1(
                "WITH i AS (INSERT INTO items VALUES ($1, $2, $3) RETURNING id), "
                "n AS (INSERT INTO item_notes SELECT id, $4 FROM i) "
                "SELECT id * 2 FROM i",
                21, "one", 5, "note")[0]
            .as<int64_t>();
      },
      {.stats = &stats});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 42);
  EXPECT_EQ(stats.attempts, 1);
  EXPECT_EQ(Count("items"), 1);
  EXPECT_EQ(Count("item_notes"), 1);
}

TEST_F(TransactionTest, AutocommitWriteThatFailsLeavesNothingAndIsNotRetried) {
  Sql("INSERT INTO items VALUES (1, 'taken', 1)");
  TransactionStats stats;
  // The first table's row is written before the second violates the unique label: the
  // statement is all or nothing.
  absl::Status s = RunAutocommitWrite(
      *pool_,
      [](OneStatement& stmt) {
        stmt.Exec(
            "WITH c AS (UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING id) "
            "INSERT INTO items SELECT 2, $1, 1 FROM c",
            "taken");
        return absl::OkStatus();
      },
      {.stats = &stats});
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_EQ(stats.attempts, 1);
  EXPECT_EQ(Sql("SELECT value FROM counter WHERE id = 1")[0][0].as<int64_t>(), 0);
  EXPECT_EQ(Count("items"), 1);
}

TEST_F(TransactionTest, AutocommitWriteRefusesASecondStatement) {
  absl::Status s = RunAutocommitWrite(*pool_, [](OneStatement& stmt) {
    stmt.Exec("INSERT INTO items VALUES ($1, $2, $3)", 1, "first", 1);
    stmt.Exec("INSERT INTO items VALUES ($1, $2, $3)", 2, "second", 1);
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_THAT(s.message(), HasSubstr("second statement"));
  // The first committed on its own (why the second is refused); the second never ran.
  EXPECT_EQ(Count("items"), 1);
  EXPECT_EQ(Count("items WHERE label = 'second'"), 0);
}

TEST_F(TransactionTest, AutocommitWriteWhoseConnectionIsLostIsUnknownAndNotRetried) {
  TransactionStats stats;
  std::atomic<int> runs{0};
  absl::Status s =
      RunAutocommitWrite(*pool_,
                         [&](OneStatement& stmt) {
                           ++runs;
                           // The backend ends itself mid-statement: the caller cannot tell whether
                           // the statement committed, so it must not run it again.
                           stmt.Exec(
                               "WITH i AS (INSERT INTO items VALUES ($1, $2, $3) RETURNING id) "
                               "SELECT pg_terminate_backend(pg_backend_pid()) FROM i",
                               1, "lost", 1);
                           return absl::OkStatus();
                         },
                         {.stats = &stats});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown) << s;
  EXPECT_THAT(s.message(), HasSubstr("may have committed"));
  EXPECT_EQ(stats.attempts, 1);
  EXPECT_EQ(runs.load(), 1);
  // The pool replaced the connection: the next write works.
  absl::Status next = RunAutocommitWrite(*pool_, [](OneStatement& stmt) {
    stmt.Exec("INSERT INTO items VALUES ($1, $2, $3)", 2, "next", 1);
    return absl::OkStatus();
  });
  EXPECT_TRUE(next.ok()) << next;
}

TEST_F(TransactionTest, AutocommitWriteAfterTheServerDroppedAnIdleConnectionRunsOnce) {
  // The situation after a PostgreSQL restart: the pool holds a connection whose backend is
  // gone. The write must neither fail as UNKNOWN nor need a retry.
  int old_pid = 0;
  {
    absl::StatusOr<ConnectionPool::Lease> lease = pool_->Borrow();
    ASSERT_TRUE(lease.ok()) << lease.status();
    old_pid =
        pqxx::nontransaction(lease->connection()).exec1("SELECT pg_backend_pid()")[0].as<int>();
  }
  ASSERT_EQ(pool_->idle_connections(), 1);
  Sql("SELECT pg_terminate_backend(" + std::to_string(old_pid) + ", 5000)");
  TransactionStats stats;
  absl::Status s = RunAutocommitWrite(*pool_,
                                      [](OneStatement& stmt) {
                                        stmt.Exec("INSERT INTO items VALUES ($1, $2, $3)", 1,
                                                  "after-restart", 1);
                                        return absl::OkStatus();
                                      },
                                      {.stats = &stats});
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(stats.attempts, 1);
  EXPECT_EQ(Count("items"), 1);
}

}  // namespace
}  // namespace rkl::db
