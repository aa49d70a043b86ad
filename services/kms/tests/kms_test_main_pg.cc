#include <gtest/gtest.h>

#include <optional>

#include "kms_core_suite.h"
#include "kms_db_roles.h"
#include "kms_pg_repository.h"
#include "rkl/db/schema_roles.h"
#include "rkl/kms/migrations.h"
#include "rkl/testing/test_database.h"

namespace rkl::kms::testing {
namespace {

class PgFixture final : public RepositoryFixture {
 public:
  explicit PgFixture(rkl::testing::TestDatabase db)
      : db_(std::move(db)), pool_(db::PoolOptions{.dsn = db_.runtime_dsn(), .max_size = 8}) {
    // The repository runs as the runtime role, with only the privileges KMS is granted.
    auto applied =
        db::MigrateAsOwner(db_.owner_dsn(), db_.runtime_role(), Migrations(), kKmsRuntimeGrants);
    EXPECT_TRUE(applied.ok()) << applied.status();
    repo_.emplace(pool_, crypto::SecretBytes(32));
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
