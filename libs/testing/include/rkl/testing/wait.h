#pragma once
// Waiting for an event in a test without assuming how fast the machine is.
//
// A test that must see something happen in another thread or process waits for the event
// itself, never for a duration: WaitUntil polls `done` until it is true or a deadline far
// beyond any plausible delay passes (a loaded CI machine may be tens of times slower than
// a quiet one). The deadline only turns a hang into a clear failure; it is not a timing
// assumption, so no assertion ever depends on how long the event took.
//
// What a test must see *not* happen (a thread that should block on a lock, say) is not
// shown by waiting a while and looking: wait instead for the positive evidence that it is
// blocked (e.g. PostgreSQL lists the backend as waiting on a lock), or for its completion.

#include "absl/functional/function_ref.h"
#include "absl/time/time.h"

namespace rkl::testing {

// Far beyond any delay a correct system shows, and well inside ctest's per-test timeout.
inline constexpr absl::Duration kEventDeadline = absl::Seconds(120);

// Polls `done` (first at once, then every `poll`) until it returns true (-> true) or
// `deadline` of wall time has passed (-> false, after one last look).
bool WaitUntil(absl::FunctionRef<bool()> done, absl::Duration deadline = kEventDeadline,
               absl::Duration poll = absl::Milliseconds(2));

}  // namespace rkl::testing
