#pragma once
// Shared set-up for the rkl::db PostgreSQL tests: one fresh database per test.

#include <gtest/gtest.h>

#include <optional>
#include <pqxx/pqxx>
#include <string>

#include "rkl/testing/test_database.h"

namespace rkl::db {

class PgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<rkl::testing::TestDatabase> db = rkl::testing::TestDatabase::Create();
    ASSERT_TRUE(db.ok()) << db.status();
    db_.emplace(*std::move(db));
  }

  const std::string& dsn() const { return db_->dsn(); }

  // Runs one statement outside the code under test, for set-up and inspection.
  pqxx::result Sql(const std::string& statement) {
    pqxx::connection conn(dsn());
    pqxx::work tx(conn);
    pqxx::result r = tx.exec(statement);
    tx.commit();
    return r;
  }

  std::optional<rkl::testing::TestDatabase> db_;
};

}  // namespace rkl::db
