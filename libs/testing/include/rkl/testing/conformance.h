#pragma once
// The one pattern for running a contract against several implementations (STYLE.md, "Tests
// by tier": Vault runs every storage backend through the same exerciser): a
// value-parameterized gtest suite whose parameter is an Implementation, a name and a factory
// that makes a fresh instance for one test.
//
//   // <svc>_suite.h: the fixture, so each test binary can instantiate it.
//   class KmsCoreSuite : public rkl::testing::ConformanceTest<RepositoryUnderTest> { ... };
//   // <svc>_suite.cc, linked into every binary that instantiates it: the cases.
//   TEST_P(KmsCoreSuite, FullFlowForEveryAlgorithm) { ... }
//   // One line per implementation, in the binary of its tier: the in-memory one in the
//   // unit binary (*_test), the PostgreSQL one in *_pgtest.
//   INSTANTIATE_TEST_SUITE_P(Memory, KmsCoreSuite, ::testing::Values(MemoryRepository()),
//                            rkl::testing::ImplementationName());
//
// A case that holds for one implementation only (what only a real database shows) is a
// TEST_P of a fixture derived from the suite, instantiated with that implementation alone.
// The factory runs in SetUp, once per test; it returns null after recording a failure
// (ADD_FAILURE) when it cannot make the instance.

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <utility>

namespace rkl::testing {

template <typename T>
struct Implementation {
  std::string name;  // the instantiation's name suffix: letters and digits only
  std::function<std::unique_ptr<T>()> make;

  // What gtest prints for the parameter (the factory has no useful text).
  friend void PrintTo(const Implementation& impl, std::ostream* os) { *os << impl.name; }
};

template <typename T>
class ConformanceTest : public ::testing::TestWithParam<Implementation<T>> {
 protected:
  // A fresh instance of this instantiation's implementation (null on failure, see above).
  std::unique_ptr<T> MakeImplementation() const { return this->GetParam().make(); }
};

// The parameters of a suite instantiated over the one implementation `make` makes.
template <typename T>
auto OneImplementation(std::string name, std::function<std::unique_ptr<T>()> make) {
  return ::testing::Values(Implementation<T>{std::move(name), std::move(make)});
}

// Names each test after its implementation ("KmsCoreSuite.FullFlow/Memory").
struct ImplementationName {
  template <typename T>
  std::string operator()(const ::testing::TestParamInfo<Implementation<T>>& info) const {
    return info.param.name;
  }
};

}  // namespace rkl::testing
