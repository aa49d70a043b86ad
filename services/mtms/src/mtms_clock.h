#pragma once
// The time source of rkl-mtms. Every decision that depends on time (the ±5 minute window,
// certificate and CRL validity, forwarder backoff and leases) reads it through Clock, so
// tests inject a FakeClock and never depend on how fast the machine is.
// Implementations must be thread-safe.

#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace rkl::mtms {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() const = 0;
  int64_t NowUnixSeconds() const { return NowUnixMs() / 1000; }
};

class SystemClock final : public Clock {
 public:
  int64_t NowUnixMs() const override { return absl::ToUnixMillis(absl::Now()); }
};

}  // namespace rkl::mtms
