#pragma once
// Checks of HsmCore behaviour that hold for every key store, shared by the unit tests (fake
// store) and the PostgreSQL tests.

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "hsm_core.h"
#include "rkl/crypto/cipher.h"
#include "test_terminal.h"

namespace rkl::hsm::testing {

// Eight concurrent first deliveries of the TMK of terminal `t` (its AUK and TEK imported,
// replace_existing false) all get the same key, and exactly one of them made it.
inline void ExpectConcurrentDeliveriesAgreeOnOneTmk(HsmCore& core, const std::string& caller,
                                                    const TestTerminal& t, uint64_t auk,
                                                    uint64_t tek) {
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<AuthenticatedDelivery>> results(8);
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      Bytes rnd1 = crypto::RandomBytes(crypto::BlockSize(t.tk.algorithm));
      auto challenge = core.AuthChallenge(caller, auk, t.sn, rnd1);
      if (!challenge.ok()) {
        results[i] = challenge.status();
        return;
      }
      Bytes crnd2 = protocol::MakeCrnd2(t.AuthKeys(), rnd1, challenge->rnd2).value();
      results[i] = core.AuthenticateAndDeliver(caller, {auk, t.sn, rnd1, challenge->rnd2, crnd2},
                                               t.tk.algorithm, false, tek);
    });
  }
  for (auto& th : threads) th.join();
  int created = 0;
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tmk.tmk_index, results[0]->tmk.tmk_index);
    created += r->tmk.created;
  }
  EXPECT_EQ(created, 1);
}

}  // namespace rkl::hsm::testing
