#pragma once
// TkWaitPort: how KmsCore's BeginAuthentication waits for a terminal's transport key
// instead of answering NOT_FOUND at once (docs/kms.md "Authentication and delivery"). rkl-kms uses
// TkWaiters (PostgreSQL LISTEN/NOTIFY, tk_waiters.h); unit tests use a fake.
//
// The contract: a Ticket is registered for one SN before the caller reads the terminal, so
// a transport key committed after that read signals it (or the port wakes every ticket, when
// it may have missed a signal); the caller re-reads after every wake. Implementations are
// thread-safe.

#include <memory>
#include <string>

#include "absl/time/time.h"

namespace rkl::kms {

class TkWaitPort {
 public:
  enum class WaitResult {
    kSignalled,  // a TK for the SN may have arrived (or the port may have missed one): re-read
    kDeadline,   // nothing came before the deadline
    kClosed,     // the port is shutting down: answer with what the last read found
  };

  class Ticket {
   public:
    virtual ~Ticket() = default;
    // Returns as soon as the SN was signalled since the ticket was registered or since the
    // last Wait returned kSignalled, at `deadline` (on the clock KmsCore was given: the
    // system clock in rkl-kms), or when the port closes.
    virtual WaitResult Wait(absl::Time deadline) = 0;
  };

  virtual ~TkWaitPort() = default;
  // A ticket for `sn`, registered now; null when the port already holds its maximum of
  // tickets (or is closed): the caller answers at once.
  virtual std::unique_ptr<Ticket> Register(const std::string& sn) = 0;
};

}  // namespace rkl::kms
