#pragma once
// The request id of the work the current thread is doing, so that every log line and audit
// record written while serving one terminal's flow carries the same id (docs/operations.md,
// "Request ids").
//
// rkl::rpc sets it for the duration of each RPC handler (from the call's x-request-id) and
// MakeClientContext sends it on every outgoing call made meanwhile; the logging set-up
// (rkl/common/logging.h) appends it to each line; rkl::audit stores it with each record.
// Work that runs on another thread (a background forwarder) sets it itself with
// ScopedRequestId. Ids are checked where they enter (rkl/rpc/call_context.h), never here.
// Thread-local: nothing is shared between threads.

#include <string>
#include <string_view>

namespace rkl {

// The id set on this thread; empty when none is.
std::string_view CurrentRequestId();

// Sets the thread's current request id for its lifetime and restores the previous one (which
// may be none) when destroyed. Scopes nest; an empty `id` clears the id for the scope.
// Create and destroy it on the same thread.
class [[nodiscard]] ScopedRequestId {
 public:
  explicit ScopedRequestId(std::string id);
  ~ScopedRequestId();
  ScopedRequestId(const ScopedRequestId&) = delete;
  ScopedRequestId& operator=(const ScopedRequestId&) = delete;

 private:
  std::string previous_;
};

}  // namespace rkl
