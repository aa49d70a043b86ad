#pragma once
// Building a test fixture from calls that cannot fail in a sound build.

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/statusor.h"

namespace rkl::testing {

// The value of `v`. A fixture that cannot be built leaves nothing to test, so an error
// is printed and the process aborts (usable where gtest's ASSERT_* cannot be: constructors,
// functions returning values).
template <typename T>
T Must(absl::StatusOr<T> v) {
  if (v.ok()) return *std::move(v);
  std::fprintf(stderr, "test fixture: %s\n", v.status().ToString().c_str());
  std::abort();
}

}  // namespace rkl::testing
