#pragma once
// SIGTERM/SIGINT handling for daemons, via a self-pipe: the signal handler only writes one
// byte (async-signal-safe), and an ordinary thread blocked in WaitForShutdownSignal() does
// the real work. Works whichever thread the kernel delivers the signal to, so it does not
// depend on masking signals before gRPC starts its threads.
//
// After WaitForShutdownSignal() returns, SIGTERM/SIGINT are back to their default action:
// a second Ctrl-C during a slow graceful shutdown ends the process at once.

namespace rkl::rpc {

// Installs the handlers now, so a signal arriving before WaitForShutdownSignal() is not
// lost. Idempotent. WaitForShutdownSignal() calls it too.
void InstallShutdownSignalHandlers();

// Blocks until SIGTERM or SIGINT arrives, or RequestShutdown() is called. Returns the
// signal number, or 0 for RequestShutdown().
int WaitForShutdownSignal();

// Wakes WaitForShutdownSignal() as a signal would (tests, an admin "stop" RPC).
// Async-signal-safe once InstallShutdownSignalHandlers() has run.
void RequestShutdown();

}  // namespace rkl::rpc
