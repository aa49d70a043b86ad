#pragma once
// Process-wide settings every rkl daemon applies at start-up, before it starts threads.

namespace rkl {

// Turns off Abseil's mutex deadlock detector. Debian builds Abseil without NDEBUG, so the
// detector is on by default and updates a lock graph (GraphCycles) on every absl::Mutex
// acquisition, work that only finds lock-order bugs. Tests keep it on, so the daemons'
// lock order is checked there rather than in production.
void InitDaemonProcess();

}  // namespace rkl
