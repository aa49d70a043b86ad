#include "rkl/audit/refusal_tally.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rkl::audit {
namespace {

using ::testing::AllOf;
using ::testing::Field;
using ::testing::UnorderedElementsAre;

constexpr int64_t kMinute = RefusalTally::kIntervalMs;
constexpr int64_t kT0 = 1'700'000'000'000 - 1'700'000'000'000 % kMinute;

std::vector<RefusalCount> FlushAll(RefusalTally& tally) {
  std::vector<RefusalCount> out;
  absl::StatusOr<int64_t> n = tally.Flush([&](const std::vector<RefusalCount>& counts) {
    out = counts;
    return absl::OkStatus();
  });
  EXPECT_TRUE(n.ok()) << n.status();
  return out;
}

TEST(RefusalTallyTest, CountsPerMinuteSnSourceActionAndReason) {
  RefusalTally tally;
  const absl::Status not_found = absl::NotFoundError("sn: no such terminal");
  tally.Count(kT0 + 5, "POS-1", "10.0.0.1", "auth.begin", not_found);
  tally.Count(kT0 + 59'999, "POS-1", "10.0.0.1", "auth.begin", not_found);
  tally.Count(kT0 + 10, "POS-1", "10.0.0.2", "auth.begin", not_found);
  tally.Count(kT0 + kMinute, "POS-1", "10.0.0.1", "auth.begin",
              absl::InvalidArgumentError("rnd1: must be 16 bytes"));
  tally.Count(kT0 + 20, "", "", "auth.begin", not_found);  // unknown: "*"
  std::vector<RefusalCount> rows = FlushAll(tally);
  auto row = [](int64_t minute, const char* sn, const char* source, const char* reason,
                int64_t count) {
    return AllOf(Field(&RefusalCount::interval_start_ms, minute), Field(&RefusalCount::sn, sn),
                 Field(&RefusalCount::source, source), Field(&RefusalCount::reason, reason),
                 Field(&RefusalCount::count, count));
  };
  EXPECT_THAT(rows,
              UnorderedElementsAre(row(kT0, "POS-1", "10.0.0.1", "NOT_FOUND", 2),
                                   row(kT0, "POS-1", "10.0.0.2", "NOT_FOUND", 1),
                                   row(kT0 + kMinute, "POS-1", "10.0.0.1", "INVALID_ARGUMENT", 1),
                                   row(kT0, "*", "*", "NOT_FOUND", 1)));
  EXPECT_TRUE(FlushAll(tally).empty());  // taken once
}

// However many SNs or addresses a minute's traffic uses, it adds at most max_keys rows plus
// the overflow row per (action, reason).
TEST(RefusalTallyTest, DistinctKeysPerMinuteAreCappedAndTheRestShareTheOverflowRow) {
  RefusalTally tally(/*max_keys_per_interval=*/3);
  const absl::Status refusal = absl::NotFoundError("x");
  for (int i = 0; i < 1000; ++i) {
    tally.Count(kT0 + i, absl::StrCat("POS-", i), absl::StrCat("10.0.", i / 256, ".", i % 256),
                "auth.begin", refusal);
  }
  // Flushing in the middle of the minute does not reset the cap.
  std::vector<RefusalCount> first = FlushAll(tally);
  tally.Count(kT0 + 2000, "POS-2000", "10.9.9.9", "auth.begin", refusal);
  std::vector<RefusalCount> second = FlushAll(tally);
  ASSERT_EQ(first.size(), 4u);
  int64_t overflow = 0;
  for (const RefusalCount& c : first) {
    if (c.sn == kAny) overflow = c.count;
  }
  EXPECT_EQ(overflow, 997);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].sn, kAny);
  EXPECT_EQ(second[0].source, kAny);
  // The next minute starts afresh.
  tally.Count(kT0 + kMinute, "POS-1", "10.0.0.1", "auth.begin", refusal);
  std::vector<RefusalCount> next = FlushAll(tally);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].sn, "POS-1");
}

TEST(RefusalTallyTest, AFailedFlushKeepsTheCountsForTheNextOne) {
  RefusalTally tally;
  tally.Count(kT0, "POS-1", "10.0.0.1", "auth.begin", absl::NotFoundError("x"));
  absl::StatusOr<int64_t> failed = tally.Flush(
      [](const std::vector<RefusalCount>&) { return absl::UnavailableError("database down"); });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  tally.Count(kT0 + 1, "POS-1", "10.0.0.1", "auth.begin", absl::NotFoundError("latest"));
  std::vector<RefusalCount> rows = FlushAll(tally);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].count, 2);
}

TEST(RefusalTallyTest, DetailIsTruncatedAndOverlongSourcesAreCountedAsAny) {
  RefusalTally tally;
  tally.Count(kT0, "POS-1", std::string(65, 'a'), "auth.begin",
              absl::InvalidArgumentError(std::string(1000, 'm')));
  std::vector<RefusalCount> rows = FlushAll(tally);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].source, kAny);
  EXPECT_EQ(rows[0].last_detail.size(), RefusalTally::kMaxDetailBytes);
}

}  // namespace
}  // namespace rkl::audit
