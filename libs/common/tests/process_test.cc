#include "rkl/common/process.h"

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"

namespace rkl {
namespace {

TEST(InitDaemonProcessTest, MutexLockOrderIsNotTrackedInDaemons) {
  InitDaemonProcess();
  // With Abseil's detector on (Debian's default), taking two mutexes in both orders aborts
  // the process with "Potential Mutex deadlock"; a daemon does not pay for that tracking.
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);
  }
  SUCCEED();
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);  // tests keep it on
}

}  // namespace
}  // namespace rkl
