#pragma once
// rkl::Clock: the one source of the current time for every core, service and library.
// Code that decides anything by time takes a Clock instead of calling absl::Now(), so tests
// step time by hand (rkl::testing::FakeClock) and never sleep. Only main() functions and
// the defaults of production options use SystemClock(); clock_injection_check (a ctest)
// refuses absl::Now() anywhere else in service and library code.
//
// A Clock is a cheap, copyable callable; every copy of a FakeClock shares its time.

#include <cstdint>
#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace rkl {

using Clock = std::function<absl::Time()>;

// The wall clock.
inline Clock SystemClock() {
  return [] { return absl::Now(); };  // the one place absl::Now() is the clock
}

inline int64_t NowUnixMs(const Clock& clock) { return absl::ToUnixMillis(clock()); }
inline int64_t NowUnixSeconds(const Clock& clock) { return absl::ToUnixSeconds(clock()); }

}  // namespace rkl
