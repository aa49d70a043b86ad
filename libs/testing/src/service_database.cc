#include "rkl/testing/service_database.h"

#include <utility>

#include "absl/status/status.h"

namespace rkl::testing {

pqxx::result RunSql(const std::string& dsn, const std::string& statement) {
  pqxx::connection conn(dsn);
  pqxx::work tx(conn);
  pqxx::result r = tx.exec(statement);
  tx.commit();
  return r;
}

absl::StatusOr<ServiceDatabase> ServiceDatabase::Create(ServiceSchema schema) {
  absl::StatusOr<TestDatabase> db = TestDatabase::Create();
  if (!db.ok()) return db.status();
  ServiceDatabase out(*std::move(db), schema);
  if (!schema.migrations.empty() || !schema.grants.empty()) {
    absl::StatusOr<int> applied = out.Migrate();
    if (!applied.ok()) return applied.status();
  }
  return out;
}

ServiceDatabase::ServiceDatabase(TestDatabase db, ServiceSchema schema)
    : db_(std::move(db)),
      schema_(schema),
      pool_(std::make_unique<db::ConnectionPool>(
          db::PoolOptions{.dsn = db_.runtime_dsn(), .max_size = 8})) {}

absl::StatusOr<int> ServiceDatabase::Migrate() const {
  return db::MigrateAsOwner(db_.owner_dsn(), db_.runtime_role(), schema_.migrations,
                            schema_.grants);
}

std::unique_ptr<db::ConnectionPool> ServiceDatabase::NewPool(int max_size) const {
  return std::make_unique<db::ConnectionPool>(
      db::PoolOptions{.dsn = db_.runtime_dsn(), .max_size = max_size});
}

void PgFixture::SetUp() {
  absl::StatusOr<ServiceDatabase> created = ServiceDatabase::Create(schema_);
  ASSERT_TRUE(created.ok()) << created.status();
  database_.emplace(*std::move(created));
}

}  // namespace rkl::testing
