#pragma once
// FakeClock: a rkl::Clock whose time moves only when a test says so. Copies (and the
// rkl::Clock it converts to) share one time, so a core built with it sees every Advance.
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "rkl/common/clock.h"

namespace rkl::testing {

class FakeClock {
 public:
  // 2023-11-14T22:13:20Z: a fixed, ordinary instant.
  static constexpr int64_t kDefaultStartMs = 1'700'000'000'000;

  explicit FakeClock(int64_t start_unix_ms = kDefaultStartMs)
      : now_ms_(std::make_shared<std::atomic<int64_t>>(start_unix_ms)) {}
  explicit FakeClock(absl::Time start) : FakeClock(absl::ToUnixMillis(start)) {}

  absl::Time operator()() const { return absl::FromUnixMillis(now_ms_->load()); }
  absl::Time Now() const { return (*this)(); }
  int64_t NowUnixMs() const { return now_ms_->load(); }
  int64_t NowUnixSeconds() const { return NowUnixMs() / 1000; }

  void Set(int64_t unix_ms) { now_ms_->store(unix_ms); }
  void Set(absl::Time t) { Set(absl::ToUnixMillis(t)); }
  void Advance(absl::Duration d) { *now_ms_ += absl::ToInt64Milliseconds(d); }

  // The same time as a rkl::Clock (implicit conversion works too).
  Clock AsClock() const { return *this; }

 private:
  std::shared_ptr<std::atomic<int64_t>> now_ms_;
};

}  // namespace rkl::testing
