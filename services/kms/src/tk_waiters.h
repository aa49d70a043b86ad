#pragma once
// TkWaiters: the TkWaitPort of rkl-kms. One db::Listener on kTkArrivalChannel (the
// channel PgKmsRepository's statements that give a terminal a transport key notify, with
// the SN as payload, in the same statement) wakes the tickets of that SN; when the listener
// (re)starts listening it wakes every ticket, since a signal may have been lost meanwhile.
//
// Guarantees: at most `max_waiters` tickets exist at once (Register answers null beyond);
// Close() wakes every ticket with kClosed and refuses new ones, so shutdown never waits
// for a terminal's wait to run out. Thread-safe; the listener must outlive it.

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "rkl/db/listener.h"
#include "tk_wait_port.h"

namespace rkl::kms {

class TkWaiters final : public TkWaitPort {
 public:
  TkWaiters(db::Listener& listener, size_t max_waiters);
  ~TkWaiters() override;

  std::unique_ptr<Ticket> Register(const std::string& sn) override;
  void Close();
  // Tickets registered now.
  size_t tickets() const;

 private:
  class PgTicket;
  struct Waiter {
    bool signalled = false;
  };
  void Signal(const std::string& sn);
  void SignalAll();
  void Remove(const std::string& sn, Waiter* waiter);

  const size_t max_waiters_;
  mutable absl::Mutex mu_;
  std::multimap<std::string, Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  db::Listener::Subscription subscription_;
};

}  // namespace rkl::kms
