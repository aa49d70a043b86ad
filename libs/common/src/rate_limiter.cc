#include "rkl/common/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace rkl {

namespace {

absl::Duration Interval(const RateLimit& limit) {
  if (limit.per_second <= 0) return absl::InfiniteDuration();
  return absl::Nanoseconds(static_cast<int64_t>(std::llround(1e9 / limit.per_second)));
}

}  // namespace

KeyedRateLimiter::KeyedRateLimiter(RateLimit limit, Clock clock, size_t max_keys)
    : limit_{limit.per_second, std::max(1.0, std::floor(limit.burst))},
      interval_(Interval(limit_)),
      capacity_(interval_ * static_cast<int64_t>(limit_.burst)),
      clock_(std::move(clock)),
      max_keys_(std::max<size_t>(1, max_keys)) {}

absl::Duration KeyedRateLimiter::Take(Bucket& b, absl::Time now) const {
  const absl::Time tat = std::max(b.tat, now) + interval_;
  if (tat - now > capacity_) {
    // Rounded up to the millisecond, so a caller that waits exactly this long gets through.
    return absl::Ceil(tat - now - capacity_, absl::Milliseconds(1));
  }
  b.tat = tat;
  return absl::ZeroDuration();
}

absl::Duration KeyedRateLimiter::Acquire(std::string_view key) {
  if (!enabled()) return absl::ZeroDuration();
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(absl::string_view(key.data(), key.size()));
  if (it != buckets_.end()) return Take(it->second, now);
  if (buckets_.size() >= max_keys_) {
    // Full buckets carry no information: drop them.
    absl::erase_if(buckets_, [&](const auto& entry) { return entry.second.tat <= now; });
  }
  if (buckets_.size() >= max_keys_) return Take(overflow_, now);
  return Take(buckets_[std::string(key)], now);
}

size_t KeyedRateLimiter::tracked_keys() const {
  absl::MutexLock lock(&mu_);
  return buckets_.size();
}

}  // namespace rkl
