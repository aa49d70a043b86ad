#include "kms_core_suite.h"
#include "memory_kms_repository.h"

namespace rkl::kms::testing {
namespace {

class MemoryFixture final : public RepositoryFixture {
 public:
  KmsRepository& repository() override { return repo_; }

 private:
  MemoryKmsRepository repo_;
};

}  // namespace

std::unique_ptr<RepositoryFixture> MakeRepositoryFixture() {
  return std::make_unique<MemoryFixture>();
}

}  // namespace rkl::kms::testing
