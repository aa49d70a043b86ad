#pragma once
// TestDatabase: a fresh, empty PostgreSQL database on the test cluster, owned by one test.
//
// Guarantees:
//  - the database name is unique per call (process id, a counter and random bits), so
//    test binaries that ctest runs in parallel never share or collide on a database;
//  - it comes with the two roles of a deployment (docs/operations.md, "Database roles"),
//    made for it alone: an owner, which owns the database (migrations run as it), and a
//    runtime role, which may only connect until a migration step grants it its DML. PUBLIC
//    may neither connect nor create temporary tables, as in deploy/local;
//  - the destructor drops the database WITH (FORCE), terminating connections a failed test
//    left open, and then both roles, so a run leaves nothing behind (and the cluster itself
//    is thrown away by the rkl_pg fixture cleanup anyway);
//  - the cluster is found only through RKL_TEST_PG_DSN_FILE; when that is unset or the
//    file is missing, Create() fails with a message saying how to provide it.
// Move-only. Not thread-safe for concurrent moves; dsn() may be read from any thread.

#include <string>

#include "absl/status/statusor.h"

namespace rkl::testing {

// The cluster's admin DSN (a superuser, database `postgres`), read from the file named by
// RKL_TEST_PG_DSN_FILE.
absl::StatusOr<std::string> ReadClusterDsn();

class TestDatabase {
 public:
  // Creates a new database on the cluster named by RKL_TEST_PG_DSN_FILE.
  static absl::StatusOr<TestDatabase> Create();

  TestDatabase(TestDatabase&& other) noexcept;
  TestDatabase& operator=(TestDatabase&& other) noexcept;
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;
  ~TestDatabase();

  // libpq DSN (key=value form) that connects to this database as the cluster superuser.
  const std::string& dsn() const { return dsn_; }
  // The same database as its owner role (what db.owner_dsn names in a deployment).
  const std::string& owner_dsn() const { return owner_dsn_; }
  // The same database as the runtime role (db.dsn in a deployment).
  const std::string& runtime_dsn() const { return runtime_dsn_; }
  const std::string& owner_role() const { return owner_role_; }
  const std::string& runtime_role() const { return runtime_role_; }
  const std::string& name() const { return name_; }
  // DSN of the cluster's maintenance database, for tests that must act outside their own
  // database (e.g. terminate backends).
  const std::string& admin_dsn() const { return admin_dsn_; }

 private:
  TestDatabase(std::string admin_dsn, std::string name, std::string password);
  void Drop() noexcept;

  std::string admin_dsn_;
  std::string name_;
  std::string dsn_;
  std::string owner_role_;
  std::string runtime_role_;
  std::string owner_dsn_;
  std::string runtime_dsn_;
};

}  // namespace rkl::testing
