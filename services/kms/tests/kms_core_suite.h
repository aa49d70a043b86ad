#pragma once
// The KmsCore test suite runs once per repository implementation (in memory in kms_test,
// PostgreSQL in kms_pgtest), like Vault's storage conformance suite: each test binary
// defines MakeRepositoryFixture().

#include <memory>

#include "kms_repository.h"

namespace rkl::kms::testing {

class RepositoryFixture {
 public:
  virtual ~RepositoryFixture() = default;
  virtual KmsRepository& repository() = 0;
};

std::unique_ptr<RepositoryFixture> MakeRepositoryFixture();

}  // namespace rkl::kms::testing
