#pragma once
// Process-wide settings every rkl daemon applies at start-up, before it starts threads.

namespace rkl {

// Turns off Abseil's mutex deadlock detector. Debian builds Abseil without NDEBUG, so the
// detector is on by default and records a lock graph on every absl::Mutex acquisition
// (GraphCycles, in the CPU profile of any process that leaves it on; docs/performance.md).
// Tests keep it on; the daemons' lock order is covered by those tests.
void InitDaemonProcess();

}  // namespace rkl
