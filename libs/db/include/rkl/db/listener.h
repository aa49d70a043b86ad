#pragma once
// Listener: one dedicated PostgreSQL connection that LISTENs on a channel and hands each
// notification's payload to the subscribers, so a process waits for a row instead of
// polling for it.
//
// Guarantees:
//  - a NOTIFY is delivered at its transaction's commit (PostgreSQL): a subscriber that hears
//    a payload and then reads sees the committed row; a rolled-back NOTIFY is never heard;
//  - a subscriber that subscribes before it reads misses nothing: a change committed after
//    its read is either notified to it, or the connection was lost in between and the
//    subscriber is told to read again (`reset`) once the listener LISTENs again;
//  - on connection loss the listener reconnects with a doubling back-off (initial_backoff ..
//    max_backoff) and, each time it LISTENs again (the first time too), calls every
//    subscriber's `reset`: a notification lost while disconnected costs a re-read, never a
//    missed change;
//  - Stop() returns promptly, whatever the listener waits for (a self-pipe wakes it), and no
//    callback runs once it returned; the destructor stops;
//  - callbacks run on the listener's thread, one at a time, under the subscriber lock: they
//    must be quick and must not Subscribe or drop a Subscription; once a Subscription is
//    dropped none of its callbacks runs any more;
//  - logs name the database without its password (ScrubPassword).
// Thread-safe. Not copyable or movable.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace rkl::db {

struct ListenerOptions {
  // libpq DSN; include connect_timeout=N (a black-holed host would block a reconnect for the
  // kernel's TCP timeout, and Stop() with it).
  std::string dsn;
  // The channel: a name the program chooses (LISTEN quotes it), never input.
  std::string channel;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
};

class Listener {
 public:
  struct Callbacks {
    std::function<void(const std::string& payload)> notified;
    // The listener (re)started listening: anything may have changed unheard; read again.
    std::function<void()> reset;
  };

  // Unsubscribes when dropped. Move-only; must not outlive its Listener.
  class Subscription {
   public:
    Subscription() = default;
    Subscription(Subscription&& other) noexcept;
    Subscription& operator=(Subscription&& other) noexcept;
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;
    ~Subscription();

   private:
    friend class Listener;
    Subscription(Listener* listener, uint64_t id) : listener_(listener), id_(id) {}
    void Release() noexcept;
    Listener* listener_ = nullptr;
    uint64_t id_ = 0;
  };

  // Does not connect: Start() does, on the listener's thread.
  explicit Listener(ListenerOptions options);
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  // Starts the thread (once; later calls do nothing).
  void Start();
  // Stops and joins the thread; idempotent.
  void Stop();

  Subscription Subscribe(Callbacks callbacks);

  // Whether the connection is up and LISTENing now.
  bool listening() const { return listening_.load(); }
  // How many times the listener started LISTENing (1 after the first connection).
  uint64_t listens() const { return listens_.load(); }

 private:
  void Run();
  // Listens on one connection until it breaks or Stop(); returns the error text ("" on stop).
  std::string ListenOnce();
  // Waits up to `timeout` for Stop() (or for `fd` to become readable when fd >= 0). Whether
  // `fd` is readable.
  bool WaitReadable(int fd, absl::Duration timeout);
  void Dispatch(const std::string& payload);
  void DispatchReset();
  void Unsubscribe(uint64_t id);

  const ListenerOptions options_;
  int wake_[2] = {-1, -1};  // self-pipe: Stop() writes, the thread polls the read end
  std::thread thread_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> listening_{false};
  std::atomic<uint64_t> listens_{0};

  absl::Mutex mu_;
  std::map<uint64_t, Callbacks> subscribers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace rkl::db
