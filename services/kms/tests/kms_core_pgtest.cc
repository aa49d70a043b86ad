// PostgreSQL tier: the KmsCore conformance suite over PgKmsRepository, on a fresh database
// migrated as the owner, the repository running as the runtime role.

#include <gtest/gtest.h>

#include <optional>

#include "kms_core_suite.h"
#include "kms_db_roles.h"
#include "kms_pg_repository.h"
#include "rkl/kms/migrations.h"
#include "rkl/testing/service_database.h"

namespace rkl::kms::testing {
namespace {

class PgRepository final : public RepositoryUnderTest {
 public:
  static std::unique_ptr<RepositoryUnderTest> Create() {
    auto db = rkl::testing::ServiceDatabase::Create(
        {.migrations = Migrations(), .grants = kKmsRuntimeGrants});
    if (!db.ok()) {
      ADD_FAILURE() << db.status();
      return nullptr;
    }
    return std::unique_ptr<RepositoryUnderTest>(new PgRepository(*std::move(db)));
  }
  KmsRepository& repository() override { return repo_; }

 private:
  explicit PgRepository(rkl::testing::ServiceDatabase db)
      : db_(std::move(db)), repo_(db_.pool(), crypto::SecretBytes(32)) {}

  rkl::testing::ServiceDatabase db_;
  PgKmsRepository repo_;
};

INSTANTIATE_TEST_SUITE_P(
    Postgres, KmsCoreSuite,
    rkl::testing::OneImplementation<RepositoryUnderTest>("Postgres", &PgRepository::Create),
    rkl::testing::ImplementationName());

}  // namespace
}  // namespace rkl::kms::testing
