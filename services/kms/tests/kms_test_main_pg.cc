#include <gtest/gtest.h>

#include <optional>

#include "kms_core_suite.h"
#include "pg_kms_repository.h"
#include "rkl/db/migration.h"
#include "rkl/kms/migrations.h"
#include "rkl/testing/test_database.h"

namespace rkl::kms::testing {
namespace {

class PgFixture final : public RepositoryFixture {
 public:
  explicit PgFixture(rkl::testing::TestDatabase db)
      : db_(std::move(db)), pool_(db::PoolOptions{.dsn = db_.dsn(), .max_size = 8}) {
    auto applied = db::ApplyMigrations(pool_, Migrations());
    EXPECT_TRUE(applied.ok()) << applied.status();
    repo_.emplace(pool_);
  }
  KmsRepository& repository() override { return *repo_; }

 private:
  rkl::testing::TestDatabase db_;
  db::ConnectionPool pool_;
  std::optional<PgKmsRepository> repo_;
};

}  // namespace

std::unique_ptr<RepositoryFixture> MakeRepositoryFixture() {
  auto db = rkl::testing::TestDatabase::Create();
  EXPECT_TRUE(db.ok()) << db.status();
  if (!db.ok()) return nullptr;
  return std::make_unique<PgFixture>(*std::move(db));
}

}  // namespace rkl::kms::testing
