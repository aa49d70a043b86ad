#pragma once
// Checks of HsmCore behaviour that hold for every key store, shared by the unit tests (fake
// store) and the PostgreSQL tests.

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "hsm_core.h"

namespace rkl::hsm::testing {

// Eight concurrent first requests for the TMK of `sn` (replace_existing false) all get the
// same key, and exactly one of them made it.
inline void ExpectConcurrentTmkRequestsAgreeOnOneKey(HsmCore& core, const std::string& caller,
                                                     const std::string& sn) {
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<GeneratedTmk>> results(8);
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = core.GenerateTmk(caller, sn, crypto::KeyAlgorithm::kAes128, false);
    });
  }
  for (auto& t : threads) t.join();
  int created = 0;
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tmk_index, results[0]->tmk_index);
    created += r->created;
  }
  EXPECT_EQ(created, 1);
}

}  // namespace rkl::hsm::testing
