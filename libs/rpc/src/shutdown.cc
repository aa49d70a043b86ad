#include "rkl/rpc/shutdown.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <mutex>

namespace rkl::rpc {
namespace {

// [0] read end (blocking), [1] write end (non-blocking: a full pipe must never block a
// signal handler; one pending byte is enough to wake the waiter).
int g_pipe[2] = {-1, -1};
std::once_flag g_pipe_once;

void WriteWakeByte(unsigned char b) {
  int saved_errno = errno;
  [[maybe_unused]] ssize_t n = ::write(g_pipe[1], &b, 1);
  errno = saved_errno;
}

void OnSignal(int sig) { WriteWakeByte(static_cast<unsigned char>(sig)); }

void CreatePipe() {
  std::call_once(g_pipe_once, [] {
    if (::pipe2(g_pipe, O_CLOEXEC) != 0) std::abort();  // out of fds at start-up: hopeless
    ::fcntl(g_pipe[1], F_SETFL, ::fcntl(g_pipe[1], F_GETFL) | O_NONBLOCK);
  });
}

}  // namespace

void InstallShutdownSignalHandlers() {
  CreatePipe();
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

int WaitForShutdownSignal() {
  InstallShutdownSignalHandlers();
  unsigned char b = 0;
  for (;;) {
    ssize_t n = ::read(g_pipe[0], &b, 1);
    if (n == 1) break;
    if (n < 0 && errno == EINTR) continue;
    std::abort();  // the write end is never closed; anything else is a broken process
  }
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  return b;
}

void RequestShutdown() {
  CreatePipe();
  WriteWakeByte(0);
}

}  // namespace rkl::rpc
