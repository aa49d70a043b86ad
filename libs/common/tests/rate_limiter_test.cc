#include "rkl/common/rate_limiter.h"

#include <gtest/gtest.h>

#include <string>

namespace rkl {
namespace {

class RateLimiterTest : public ::testing::Test {
 protected:
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  rkl::Clock Clock() {
    return [this] { return now_; };
  }
};

TEST_F(RateLimiterTest, BurstThenRefusedWithTheTimeUntilTheNextToken) {
  KeyedRateLimiter limiter({.per_second = 2, .burst = 3}, Clock());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(limiter.Acquire("a"), absl::ZeroDuration()) << i;
  EXPECT_EQ(limiter.Acquire("a"), absl::Milliseconds(500));
  // A refusal takes nothing: the wait does not grow.
  EXPECT_EQ(limiter.Acquire("a"), absl::Milliseconds(500));
  now_ += absl::Milliseconds(499);
  EXPECT_EQ(limiter.Acquire("a"), absl::Milliseconds(1));
  now_ += absl::Milliseconds(1);
  EXPECT_EQ(limiter.Acquire("a"), absl::ZeroDuration());
  EXPECT_GT(limiter.Acquire("a"), absl::ZeroDuration());
}

TEST_F(RateLimiterTest, KeysAreIndependent) {
  KeyedRateLimiter limiter({.per_second = 1, .burst = 1}, Clock());
  EXPECT_EQ(limiter.Acquire("a"), absl::ZeroDuration());
  EXPECT_GT(limiter.Acquire("a"), absl::ZeroDuration());
  EXPECT_EQ(limiter.Acquire("b"), absl::ZeroDuration());
}

TEST_F(RateLimiterTest, RefillsAtTheRateAndNeverBeyondTheBurst) {
  KeyedRateLimiter limiter({.per_second = 10, .burst = 5}, Clock());
  for (int i = 0; i < 5; ++i) ASSERT_EQ(limiter.Acquire("a"), absl::ZeroDuration());
  now_ += absl::Hours(1);
  int allowed = 0;
  while (limiter.Acquire("a") == absl::ZeroDuration()) ++allowed;
  EXPECT_EQ(allowed, 5);
  // Over 10 s of steady calls, 10 per second get through.
  allowed = 0;
  for (int ms = 0; ms < 10'000; ms += 10) {
    now_ += absl::Milliseconds(10);
    if (limiter.Acquire("a") == absl::ZeroDuration()) ++allowed;
  }
  EXPECT_EQ(allowed, 100);
}

TEST_F(RateLimiterTest, OffWhenTheRateIsZero) {
  KeyedRateLimiter limiter({.per_second = 0, .burst = 1}, Clock());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(limiter.Acquire("a"), absl::ZeroDuration());
  EXPECT_EQ(limiter.tracked_keys(), 0u);
}

TEST_F(RateLimiterTest, MemoryIsBoundedAndFreshKeysShareTheOverflowBucket) {
  KeyedRateLimiter limiter({.per_second = 1, .burst = 2}, Clock(), /*max_keys=*/100);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(limiter.Acquire(std::to_string(i)), absl::ZeroDuration());
  // The table is full of draining buckets: new keys share one bucket of `burst` tokens.
  EXPECT_EQ(limiter.Acquire("new-1"), absl::ZeroDuration());
  EXPECT_EQ(limiter.Acquire("new-2"), absl::ZeroDuration());
  EXPECT_GT(limiter.Acquire("new-3"), absl::ZeroDuration());
  EXPECT_EQ(limiter.tracked_keys(), 100u);
  // Tracked keys keep their own buckets.
  EXPECT_EQ(limiter.Acquire("7"), absl::ZeroDuration());
  EXPECT_GT(limiter.Acquire("7"), absl::ZeroDuration());
  // Once the old buckets have refilled they are dropped and new keys get their own.
  now_ += absl::Seconds(10);
  EXPECT_EQ(limiter.Acquire("new-3"), absl::ZeroDuration());
  EXPECT_EQ(limiter.tracked_keys(), 1u);
}

}  // namespace
}  // namespace rkl
