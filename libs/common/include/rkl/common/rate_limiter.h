#pragma once
// KeyedRateLimiter: one token bucket per key (a source address, a serial number), for
// refusing callers that exceed a budget before they cost a database write or an HSM call.
//
// Guarantees:
//  - a key may spend at most `burst` calls at once and `per_second` calls per second on
//    average; a refused call spends nothing and learns how long until one token is back;
//  - time comes only from the injected clock, so tests step it by hand;
//  - memory is bounded: at most `max_keys` buckets. When the table is full, buckets that
//    have refilled completely (indistinguishable from absent ones) are dropped; keys that
//    still find no room share one overflow bucket, so a flood of fresh keys throttles
//    itself rather than growing the table or evicting buckets that are still draining;
//  - a limit with per_second <= 0 is off: every call passes and nothing is stored.
// Thread-safe.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rkl/common/clock.h"

namespace rkl {

struct RateLimit {
  double per_second = 0;  // refill rate; <= 0 turns the limit off
  double burst = 1;       // bucket size (at least 1)
};

class KeyedRateLimiter {
 public:
  static constexpr size_t kDefaultMaxKeys = 100000;

  KeyedRateLimiter(RateLimit limit, Clock clock, size_t max_keys = kDefaultMaxKeys);

  // Takes one token from `key`'s bucket. Zero duration: allowed. Otherwise refused, and
  // the value is the time until a token is back (nothing was taken).
  absl::Duration Acquire(std::string_view key);

  bool enabled() const { return limit_.per_second > 0; }
  size_t tracked_keys() const;

 private:
  // The bucket as a "theoretical arrival time" (GCRA): the time at which it will be full
  // again. Integer time arithmetic, so no rounding drift; full when tat <= now.
  struct Bucket {
    absl::Time tat = absl::InfinitePast();
  };
  absl::Duration Take(Bucket& b, absl::Time now) const;

  const RateLimit limit_;
  const absl::Duration interval_;  // one token's refill time
  const absl::Duration capacity_;  // burst * interval_
  const Clock clock_;
  const size_t max_keys_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
  Bucket overflow_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl
