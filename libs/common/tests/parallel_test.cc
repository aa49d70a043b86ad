#include "rkl/common/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "rkl/common/request_id.h"

namespace rkl {
namespace {

TEST(ParallelForTest, EveryThreadRunsUnderTheCallersRequestId) {
  const ScopedRequestId scope("flow-42");
  std::mutex mu;
  std::set<std::string> seen;
  ParallelFor(64, 4, [&](size_t) {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::string(CurrentRequestId()));
  });
  EXPECT_EQ(seen, std::set<std::string>{"flow-42"});
  EXPECT_EQ(CurrentRequestId(), "flow-42");
}

TEST(ParallelForTest, RunsEveryIndexExactlyOnce) {
  for (int threads : {0, 1, 3, 64}) {
    SCOPED_TRACE(threads);
    std::vector<std::atomic<int>> runs(100);
    ParallelFor(runs.size(), threads, [&](size_t i) { ++runs[i]; });
    for (const auto& r : runs) EXPECT_EQ(r.load(), 1);
  }
  int calls = 0;
  ParallelFor(0, 4, [&](size_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ParallelForTest, UsesTheCallingThreadAndAtMostThreadsThreads) {
  std::mutex mu;
  std::set<std::thread::id> seen;
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  ParallelFor(40, 3, [&](size_t) {
    int now = ++inside;
    for (int m = most; now > m && !most.compare_exchange_weak(m, now);) {
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(std::this_thread::get_id());
    }
    std::this_thread::yield();
    --inside;
  });
  EXPECT_LE(seen.size(), 3u);
  EXPECT_LE(most.load(), 3);
  // One thread only: everything runs on the caller.
  std::set<std::thread::id> single;
  ParallelFor(5, 1, [&](size_t) { single.insert(std::this_thread::get_id()); });
  EXPECT_EQ(single, std::set<std::thread::id>{std::this_thread::get_id()});
}

}  // namespace
}  // namespace rkl
