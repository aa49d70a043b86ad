#include "rkl/common/process.h"

#include "absl/synchronization/mutex.h"

namespace rkl {

void InitDaemonProcess() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

}  // namespace rkl
