#pragma once
// ServiceDatabase and PgFixture: the one way a PostgreSQL test gets a service's database.
//
// ServiceDatabase is a TestDatabase (a fresh database with its owner and runtime roles,
// dropped at the end) on which a service's migration step has run: the service's embedded
// migrations applied as the owner and the runtime role granted exactly the service's
// RuntimeGrant list (db::MigrateAsOwner), as `rkl-<svc> --migrate-only` does in a
// deployment. Code under test then connects as the runtime role (pool(), NewPool()), so a
// statement its grants do not cover fails in the test as it would in production.
// An empty ServiceSchema gives a bare database (no migrations, no grants) for the tests of
// rkl::db and rkl::audit themselves.
//
// PgFixture is the gtest fixture over it: SetUp() creates the database (a fatal failure
// when it cannot), database() and Sql() reach it. A fixture that adds its own set-up calls
// `ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp())` first. Suites whose database outlives one
// test (SetUpTestSuite worlds) or that build it inside a backend use ServiceDatabase alone.
//
// Sql() runs as the cluster superuser, outside the code under test: for set-up, inspection
// and tampering. Move-only; not thread-safe for moves, pool() is thread-safe.

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/migration.h"
#include "rkl/db/schema_roles.h"
#include "rkl/testing/test_database.h"

namespace rkl::testing {

// A service's schema: its embedded migrations and its runtime role's grants.
struct ServiceSchema {
  std::span<const db::Migration> migrations = {};
  std::span<const db::RuntimeGrant> grants = {};
};

// Runs `statement` in a transaction of its own on `dsn` and commits; throws what libpqxx
// throws (a test that expects a refusal catches it).
pqxx::result RunSql(const std::string& dsn, const std::string& statement);

class ServiceDatabase {
 public:
  // A new TestDatabase with `schema`'s migration step run on it.
  static absl::StatusOr<ServiceDatabase> Create(ServiceSchema schema = {});

  ServiceDatabase(ServiceDatabase&&) noexcept = default;
  ServiceDatabase& operator=(ServiceDatabase&&) noexcept = default;

  // Runs the migration step again (a restart): how many migrations it applied.
  absl::StatusOr<int> Migrate() const;

  // The pool the service would run on: the runtime role, created with the database,
  // connecting lazily (max_size 8).
  db::ConnectionPool& pool() { return *pool_; }
  // Another pool as the runtime role (a replica of its own, or other options).
  std::unique_ptr<db::ConnectionPool> NewPool(int max_size = 4) const;

  // As the cluster superuser (see the header comment).
  pqxx::result Sql(const std::string& statement) const { return RunSql(dsn(), statement); }

  const TestDatabase& db() const { return db_; }
  const std::string& dsn() const { return db_.dsn(); }
  const std::string& owner_dsn() const { return db_.owner_dsn(); }
  const std::string& runtime_dsn() const { return db_.runtime_dsn(); }
  const std::string& owner_role() const { return db_.owner_role(); }
  const std::string& runtime_role() const { return db_.runtime_role(); }
  const std::string& admin_dsn() const { return db_.admin_dsn(); }
  const std::string& name() const { return db_.name(); }

 private:
  ServiceDatabase(TestDatabase db, ServiceSchema schema);

  TestDatabase db_;
  ServiceSchema schema_;
  // Declared after db_: closed before the database is dropped.
  std::unique_ptr<db::ConnectionPool> pool_;
};

class PgFixture : public ::testing::Test {
 protected:
  explicit PgFixture(ServiceSchema schema = {}) : schema_(schema) {}

  void SetUp() override;

  ServiceDatabase& database() { return *database_; }
  pqxx::result Sql(const std::string& statement) { return database_->Sql(statement); }

 private:
  ServiceSchema schema_;
  std::optional<ServiceDatabase> database_;
};

}  // namespace rkl::testing
