#include "fleet.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "provision.h"
#include "rkl/common/retry_delay.h"

namespace rkl::pos {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

std::vector<absl::Duration> Ms(std::initializer_list<int> values) {
  std::vector<absl::Duration> out;
  for (int v : values) out.push_back(absl::Milliseconds(v));
  return out;
}

TEST(PercentileTest, NearestRank) {
  std::vector<absl::Duration> hundred;
  for (int i = 100; i >= 1; --i) hundred.push_back(absl::Milliseconds(i));  // unsorted
  EXPECT_EQ(Percentile(hundred, 50), absl::Milliseconds(50));
  EXPECT_EQ(Percentile(hundred, 95), absl::Milliseconds(95));
  EXPECT_EQ(Percentile(hundred, 99), absl::Milliseconds(99));
  EXPECT_EQ(Percentile(hundred, 100), absl::Milliseconds(100));
  EXPECT_EQ(Percentile(Ms({7}), 99), absl::Milliseconds(7));
  EXPECT_EQ(Percentile(Ms({1, 2, 3, 4}), 50), absl::Milliseconds(2));
  EXPECT_EQ(Percentile(Ms({1, 2, 3, 4}), 51), absl::Milliseconds(3));
  EXPECT_EQ(Percentile({}, 50), absl::ZeroDuration());
}

TEST(FailureReasonTest, GroupsBySubjectFreeMessageAndIsBounded) {
  absl::Status s = absl::UnauthenticatedError("kms: could not prove AUK for T-000007");
  EXPECT_EQ(FailureReason(s, "download-tmk", "T-000007"),
            "download-tmk: UNAUTHENTICATED: kms: could not prove AUK for <sn>");
  std::string reason = FailureReason(absl::InternalError(std::string(1000, 'x')), "", "");
  EXPECT_LT(reason.size(), 200u);
  EXPECT_THAT(reason, HasSubstr("flow: INTERNAL: "));
}

TEST(SummarizeTest, CountsFailuresByReasonAndStepLatencies) {
  std::vector<TerminalOutcome> outcomes;
  for (int i = 0; i < 10; ++i) {
    TerminalOutcome o;
    o.index = i;
    o.subject = absl::StrCat("T-", i);
    o.steps = {{"a", absl::Milliseconds(i + 1)}};
    if (i % 5 == 4) {
      o.status = absl::UnavailableError(absl::StrCat("kms down for ", o.subject));
      o.failed_step = "b";
    } else {
      o.steps.push_back({"b", absl::Milliseconds(10 * (i + 1))});
      o.total = absl::Milliseconds(11 * (i + 1));
    }
    outcomes.push_back(o);
  }
  FleetSummary s = Summarize(outcomes, absl::Seconds(2));
  EXPECT_EQ(s.total, 10);
  EXPECT_EQ(s.succeeded, 8);
  EXPECT_EQ(s.failed, 2);
  EXPECT_THAT(s.failures_by_reason, ElementsAre(Pair("b: UNAVAILABLE: kms down for <sn>", 2)));
  EXPECT_DOUBLE_EQ(s.terminals_per_second, 4.0);
  ASSERT_EQ(s.step_latency.size(), 3u);
  EXPECT_EQ(s.step_latency[0].first, "a");
  EXPECT_EQ(s.step_latency[0].second.count, 10u);
  EXPECT_EQ(s.step_latency[0].second.p50, absl::Milliseconds(5));
  EXPECT_EQ(s.step_latency[0].second.max, absl::Milliseconds(10));
  EXPECT_EQ(s.step_latency[1].first, "b");
  EXPECT_EQ(s.step_latency[1].second.count, 8u);
  EXPECT_EQ(s.step_latency[2].first, "total");
  EXPECT_EQ(s.step_latency[2].second.count, 8u);

  const std::string text = FormatSummaryText(s);
  EXPECT_THAT(text, HasSubstr("10 terminals, 8 succeeded, 2 failed"));
  EXPECT_THAT(text, HasSubstr("2  b: UNAVAILABLE: kms down for <sn>"));
  const std::string json = FormatSummaryJson(s);
  EXPECT_THAT(json, HasSubstr("\"total\":10,\"succeeded\":8,\"failed\":2"));
  EXPECT_THAT(json, HasSubstr("\"b: UNAVAILABLE: kms down for <sn>\":2"));
  EXPECT_THAT(json, HasSubstr("\"a\":{\"count\":10,\"p50_ms\":5.000"));
  EXPECT_THAT(json, ::testing::Not(HasSubstr("kms_verified_installed")));
  s.kms_verified_installed = 8;
  EXPECT_THAT(FormatSummaryJson(s), HasSubstr("\"kms_verified_installed\":8"));
  EXPECT_THAT(FormatSummaryText(s), HasSubstr("8 of 10 terminals INSTALLED"));
}

TEST(RunFleetTest, RunsEveryTerminalExactlyOnceWithBoundedConcurrency) {
  absl::Mutex mu;
  std::multiset<int> seen;
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  FleetOptions options{.count = 200, .concurrency = 8};
  FleetSummary s = RunFleet(options, [&](int index, StepRecorder& steps) {
    int now = ++in_flight;
    int prev = max_in_flight.load();
    while (now > prev && !max_in_flight.compare_exchange_weak(prev, now)) {
    }
    {
      absl::MutexLock l(&mu);
      seen.insert(index);
    }
    steps.SetSubject(absl::StrCat("SN-", index));
    absl::Status st = steps.Run("work", [&] {
      return index % 10 == 3 ? absl::NotFoundError(absl::StrCat("no SN-", index))
                             : absl::OkStatus();
    });
    --in_flight;
    return st;
  });
  EXPECT_EQ(s.total, 200);
  EXPECT_EQ(s.succeeded, 180);
  EXPECT_EQ(s.failed, 20);
  EXPECT_THAT(s.failures_by_reason, ElementsAre(Pair("work: NOT_FOUND: no <sn>", 20)));
  EXPECT_EQ(seen.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(seen.count(i), 1u) << i;
  EXPECT_LE(max_in_flight.load(), 8);
  EXPECT_EQ(s.step_latency[0].second.count, 180u);
}

TEST(RunFleetTest, PlainProgressEndsWithTheFinalCount) {
  std::ostringstream progress;
  FleetOptions options{.count = 20, .concurrency = 4, .progress = &progress};
  RunFleet(options, [](int, StepRecorder&) { return absl::OkStatus(); });
  EXPECT_THAT(progress.str(), HasSubstr("fleet: 20/20 done (20 ok, 0 failed)"));
  EXPECT_THAT(progress.str(), ::testing::Not(HasSubstr("\r")));
}

TEST(RunFleetTest, TtyProgressRedrawsOneBarLine) {
  std::ostringstream progress;
  FleetOptions options{
      .count = 10, .concurrency = 2, .progress = &progress, .progress_is_tty = true};
  RunFleet(options, [](int i, StepRecorder&) {
    return i == 0 ? absl::AbortedError("x") : absl::OkStatus();
  });
  const std::string out = progress.str();
  EXPECT_THAT(out, HasSubstr("\r[##############################] 10/10  ok 9  failed 1"));
  EXPECT_EQ(out.back(), '\n');
}

TEST(RunFleetTest, NoProgressWhenNotAsked) {
  FleetSummary s = RunFleet({.count = 3, .concurrency = 10},
                            [](int, StepRecorder&) { return absl::OkStatus(); });
  EXPECT_EQ(s.succeeded, 3);
}

}  // namespace
}  // namespace rkl::pos

namespace rkl::pos {
namespace {

// A service's rate limit (RESOURCE_EXHAUSTED with a retry hint) is waited out like an
// outage; RESOURCE_EXHAUSTED without one (a message over gRPC's size limit) is final.
TEST(IsTransientFailureTest, RateLimitsWithAHintAreRetriedOthersAreFinal) {
  EXPECT_TRUE(IsTransientFailure(RateLimitedError("rate limit", absl::Seconds(2))));
  EXPECT_TRUE(IsTransientFailure(absl::UnavailableError("down")));
  EXPECT_FALSE(IsTransientFailure(absl::ResourceExhaustedError("message too large")));
  EXPECT_FALSE(IsTransientFailure(absl::InvalidArgumentError("sn")));
}

}  // namespace
}  // namespace rkl::pos
