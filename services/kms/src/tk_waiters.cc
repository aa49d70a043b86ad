#include "tk_waiters.h"

#include <utility>

namespace rkl::kms {

class TkWaiters::PgTicket final : public TkWaitPort::Ticket {
 public:
  PgTicket(TkWaiters* owner, std::string sn) : owner_(owner), sn_(std::move(sn)) {}
  ~PgTicket() override { owner_->Remove(sn_, &waiter_); }

  WaitResult Wait(absl::Time deadline) override {
    absl::MutexLock lock(&owner_->mu_);
    auto woken = [this] { return waiter_.signalled || owner_->closed_; };
    owner_->mu_.AwaitWithDeadline(absl::Condition(&woken), deadline);
    if (owner_->closed_) return WaitResult::kClosed;
    if (!waiter_.signalled) return WaitResult::kDeadline;
    waiter_.signalled = false;
    return WaitResult::kSignalled;
  }

  Waiter* waiter() { return &waiter_; }

 private:
  TkWaiters* owner_;
  const std::string sn_;
  Waiter waiter_;
};

TkWaiters::TkWaiters(db::Listener& listener, size_t max_waiters) : max_waiters_(max_waiters) {
  subscription_ = listener.Subscribe({.notified = [this](const std::string& sn) { Signal(sn); },
                                      .reset = [this] { SignalAll(); }});
}

TkWaiters::~TkWaiters() {
  // No callback runs once the subscription is gone; tickets must be gone already.
  subscription_ = db::Listener::Subscription();
}

std::unique_ptr<TkWaitPort::Ticket> TkWaiters::Register(const std::string& sn) {
  absl::MutexLock lock(&mu_);
  if (closed_ || waiters_.size() >= max_waiters_) return nullptr;
  auto ticket = std::make_unique<PgTicket>(this, sn);
  waiters_.emplace(sn, ticket->waiter());
  return ticket;
}

void TkWaiters::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

size_t TkWaiters::tickets() const {
  absl::MutexLock lock(&mu_);
  return waiters_.size();
}

void TkWaiters::Signal(const std::string& sn) {
  absl::MutexLock lock(&mu_);
  auto [begin, end] = waiters_.equal_range(sn);
  for (auto it = begin; it != end; ++it) it->second->signalled = true;
}

void TkWaiters::SignalAll() {
  absl::MutexLock lock(&mu_);
  for (auto& [sn, waiter] : waiters_) waiter->signalled = true;
}

void TkWaiters::Remove(const std::string& sn, Waiter* waiter) {
  absl::MutexLock lock(&mu_);
  auto [begin, end] = waiters_.equal_range(sn);
  for (auto it = begin; it != end; ++it) {
    if (it->second == waiter) {
      waiters_.erase(it);
      return;
    }
  }
}

}  // namespace rkl::kms
