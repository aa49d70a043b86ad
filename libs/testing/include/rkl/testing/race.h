#pragma once
// Concurrent attempts at one thing: how many won, and that every other one lost in the one
// way a loser may.

#include <gtest/gtest.h>

#include <span>

#include "absl/status/status.h"

namespace rkl::testing {

// The number of OK statuses in `results`. Every other status must have code `loser`, the
// one failure a racer that lost may report; any other is a test failure.
inline int CountWinners(std::span<const absl::Status> results, absl::StatusCode loser) {
  int winners = 0;
  for (const absl::Status& r : results) {
    if (r.ok()) {
      ++winners;
    } else {
      EXPECT_EQ(r.code(), loser) << r;
    }
  }
  return winners;
}

}  // namespace rkl::testing
