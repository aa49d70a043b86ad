#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "rkl/db/migration.h"
#include "rkl/db/test_migrations/migrations.h"
#include "rkl/testing/service_database.h"

namespace rkl::db {
namespace {

using ::testing::HasSubstr;

std::vector<Migration> Embedded() {
  std::span<const Migration> m = test_migrations::Migrations();
  return {m.begin(), m.end()};
}

class MigrationTest : public rkl::testing::PgFixture {
 protected:
  bool TableExists(const std::string& name) {
    return !Sql("SELECT to_regclass('" + name + "') IS NULL")[0][0].as<bool>();
  }
  std::vector<int64_t> RecordedVersions(const std::string& table = "rkl_schema_migrations") {
    std::vector<int64_t> v;
    for (const pqxx::row& row : Sql("SELECT version FROM " + table + " ORDER BY version")) {
      v.push_back(row[0].as<int64_t>());
    }
    return v;
  }
};

TEST_F(MigrationTest, AppliesInOrderAndRecordsEach) {
  absl::StatusOr<int> applied = ApplyMigrations(database().dsn(), test_migrations::Migrations());
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(*applied, 3);
  EXPECT_TRUE(TableExists("widgets"));
  EXPECT_TRUE(TableExists("parts"));
  EXPECT_EQ(Sql("SELECT value FROM counters WHERE name = 'hits'")[0][0].as<int>(), 0);

  pqxx::result rows =
      Sql("SELECT version, name, checksum, applied_at IS NOT NULL FROM rkl_schema_migrations "
          "ORDER BY version");
  ASSERT_EQ(rows.size(), 3u);
  const std::vector<Migration> m = Embedded();
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_EQ(rows[i][0].as<int64_t>(), m[i].version);
    EXPECT_EQ(rows[i][1].as<std::string>(), std::string(m[i].name));
    EXPECT_EQ(rows[i][2].as<std::string>(), MigrationChecksum(m[i].sql));
    EXPECT_TRUE(rows[i][3].as<bool>());
  }
}

TEST_F(MigrationTest, SecondRunAppliesNothing) {
  ConnectionPool pool(PoolOptions{.dsn = database().dsn(), .max_size = 2});
  ASSERT_EQ(ApplyMigrations(pool, test_migrations::Migrations()).value_or(-1), 3);
  absl::StatusOr<int> again = ApplyMigrations(pool, test_migrations::Migrations());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0);
  EXPECT_EQ(RecordedVersions(), (std::vector<int64_t>{1, 2, 10}));
}

TEST_F(MigrationTest, AppliesOnlyTheNewOnes) {
  std::vector<Migration> m = Embedded();
  ASSERT_EQ(ApplyMigrations(database().dsn(), std::span(m).first(2)).value_or(-1), 2);
  absl::StatusOr<int> rest = ApplyMigrations(database().dsn(), m);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(*rest, 1);
}

TEST_F(MigrationTest, ChangedChecksumOfAppliedMigrationIsRefused) {
  ASSERT_TRUE(ApplyMigrations(database().dsn(), test_migrations::Migrations()).ok());
  std::vector<Migration> edited = Embedded();
  const std::string new_sql = std::string(edited[1].sql) + "\n-- edited after release\n";
  edited[1].sql = new_sql;
  edited.push_back({11, "later", "CREATE TABLE later (id int)"});
  absl::StatusOr<int> result = ApplyMigrations(database().dsn(), edited);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("migration 2 (create_parts)"));
  EXPECT_FALSE(TableExists("later"));  // refused before anything ran
}

TEST_F(MigrationTest, FailingMigrationRollsBackEntirelyAndNamesItsVersion) {
  std::vector<Migration> m = {
      {1, "good", "CREATE TABLE good (id int)"},
      {2, "bad", "CREATE TABLE half_done (id int);\nINSERT INTO no_such_table VALUES (1);"},
      {3, "never", "CREATE TABLE never (id int)"},
  };
  absl::StatusOr<int> result = ApplyMigrations(database().dsn(), m);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("migration 2 (bad)"));
  EXPECT_THAT(result.status().message(), HasSubstr("42P01"));
  EXPECT_TRUE(TableExists("good"));
  EXPECT_FALSE(TableExists("half_done"));
  EXPECT_FALSE(TableExists("never"));
  EXPECT_EQ(RecordedVersions(), (std::vector<int64_t>{1}));

  // Fixing the file lets the next start continue where it stopped.
  m[1].sql = "CREATE TABLE half_done (id int)";
  absl::StatusOr<int> fixed = ApplyMigrations(database().dsn(), m);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(*fixed, 2);
}

TEST_F(MigrationTest, ConcurrentRunnersApplyEachMigrationOnce) {
  // Slow first migration, so the second runner surely arrives while the first holds the
  // lock. Without the lock the second would fail on "relation already exists" or record
  // a version twice (primary key violation).
  std::vector<Migration> m = {
      {1, "slow", "SELECT pg_sleep(0.3); CREATE TABLE slow (id int)"},
      {2, "second", "CREATE TABLE second (id int)"},
      {3, "third", "CREATE TABLE third (id int)"},
  };
  constexpr int kRunners = 4;
  std::vector<absl::StatusOr<int>> results(kRunners, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRunners; ++i) {
    threads.emplace_back([&, i] {
      ConnectionPool pool(
          PoolOptions{.dsn = database().dsn(), .max_size = 1});  // one "replica" each
      results[i] = ApplyMigrations(pool, m);
    });
  }
  for (std::thread& t : threads) t.join();
  int total = 0;
  for (const absl::StatusOr<int>& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    total += *r;
  }
  EXPECT_EQ(total, 3);
  EXPECT_EQ(RecordedVersions(), (std::vector<int64_t>{1, 2, 3}));
}

TEST_F(MigrationTest, UnappliedMigrationBelowAnAppliedOneIsRefused) {
  std::vector<Migration> m = Embedded();  // 1, 2, 10
  std::vector<Migration> without_2 = {m[0], m[2]};
  ASSERT_TRUE(ApplyMigrations(database().dsn(), without_2).ok());
  absl::StatusOr<int> result = ApplyMigrations(database().dsn(), m);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("migration 2 (create_parts)"));
}

TEST_F(MigrationTest, DatabaseNewerThanBinaryIsTolerated) {
  ASSERT_TRUE(ApplyMigrations(database().dsn(), test_migrations::Migrations()).ok());
  std::vector<Migration> older = Embedded();
  older.pop_back();
  absl::StatusOr<int> result = ApplyMigrations(database().dsn(), older);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, 0);
}

TEST_F(MigrationTest, UnorderedListIsRefusedBeforeTouchingTheDatabase) {
  std::vector<Migration> m = Embedded();
  std::swap(m[0], m[1]);
  absl::StatusOr<int> result = ApplyMigrations(database().dsn(), m);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr("1 (create_widgets)"));
  EXPECT_FALSE(TableExists("rkl_schema_migrations"));
}

TEST_F(MigrationTest, CustomRecordTableAndSchema) {
  Sql("CREATE SCHEMA kms");
  absl::StatusOr<int> result =
      ApplyMigrations(database().dsn(), test_migrations::Migrations(), "kms.schema_history");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(RecordedVersions("kms.schema_history"), (std::vector<int64_t>{1, 2, 10}));
  EXPECT_FALSE(TableExists("rkl_schema_migrations"));

  absl::StatusOr<int> bad =
      ApplyMigrations(database().dsn(), test_migrations::Migrations(), "x; DROP TABLE widgets");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::db
