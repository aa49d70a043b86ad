#include "rkl/testing/wait.h"

#include "absl/time/clock.h"

namespace rkl::testing {

bool WaitUntil(absl::FunctionRef<bool()> done, absl::Duration deadline, absl::Duration poll) {
  const absl::Time give_up = absl::Now() + deadline;
  while (!done()) {
    if (absl::Now() >= give_up) return done();
    absl::SleepFor(poll);
  }
  return true;
}

}  // namespace rkl::testing
