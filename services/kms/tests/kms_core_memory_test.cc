// Unit tier: the KmsCore conformance suite over the in-memory repository.

#include "kms_core_suite.h"
#include "memory_kms_repository.h"

namespace rkl::kms::testing {
namespace {

class MemoryRepository final : public RepositoryUnderTest {
 public:
  KmsRepository& repository() override { return repo_; }

 private:
  MemoryKmsRepository repo_;
};

INSTANTIATE_TEST_SUITE_P(Memory, KmsCoreSuite,
                         rkl::testing::OneImplementation<RepositoryUnderTest>(
                             "Memory", [] { return std::make_unique<MemoryRepository>(); }),
                         rkl::testing::ImplementationName());

}  // namespace
}  // namespace rkl::kms::testing
