#include "rkl/db/connection_pool.h"

#include <libpq-fe.h>
#include <poll.h>

#include <chrono>
#include <pqxx/nontransaction>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "rkl/db/dsn.h"

namespace rkl::db {
namespace {

absl::Status CheckDsn(const std::string& dsn) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &error);
  if (error != nullptr) PQfreemem(error);  // may quote the DSN, password included
  if (options == nullptr) {
    return absl::InvalidArgumentError("database DSN is not a valid libpq connection string");
  }
  PQconninfoFree(options);
  return absl::OkStatus();
}

std::string FirstLine(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  return std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
}

// An idle connection has nothing outstanding, so a socket the server has shut down (a
// restart, a terminated backend, an idle timeout) or that reports an error is dead even
// though libpq has not noticed yet. A zero-timeout poll: no round trip, no wait. Data
// without a shutdown (a notice, or a TLS record) is left to libpq.
bool ClosedByServer(const pqxx::connection& conn) {
  pollfd p{.fd = conn.sock(), .events = POLLIN | POLLRDHUP, .revents = 0};
  if (p.fd < 0) return true;
  if (::poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace

ConnectionPool::ConnectionPool(PoolOptions options)
    : dsn_(std::move(options.dsn)),
      settings_(std::move(options.settings)),
      redacted_dsn_(RedactDsn(dsn_)),
      target_(DescribeDsnTarget(dsn_)),
      dsn_status_(CheckDsn(dsn_)),
      max_size_(options.max_size > 0 ? options.max_size : 1),
      borrow_timeout_(options.borrow_timeout) {}

ConnectionPool::~ConnectionPool() {
  // Leases must be gone by now (documented); idle connections close here.
  absl::MutexLock lock(&mu_);
  idle_.clear();
}

int ConnectionPool::open_connections() const {
  absl::MutexLock lock(&mu_);
  return open_;
}

int ConnectionPool::idle_connections() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(idle_.size());
}

int ConnectionPool::waiting_borrowers() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

PoolStats ConnectionPool::stats() const {
  PoolStats stats;
  stats.max_size = max_size_;
  stats.acquisitions = acquisitions_.load(std::memory_order_relaxed);
  stats.errors = errors_.load(std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  stats.idle = static_cast<int>(idle_.size());
  stats.in_use = open_ - stats.idle;
  stats.waits = waits_;
  stats.wait_seconds = absl::ToDoubleSeconds(wait_time_);
  return stats;
}

absl::StatusOr<ConnectionPool::Lease> ConnectionPool::Borrow() { return Borrow(borrow_timeout_); }

absl::StatusOr<ConnectionPool::Lease> ConnectionPool::Borrow(absl::Duration timeout) {
  if (!dsn_status_.ok()) return dsn_status_;
  const absl::Time deadline = absl::Now() + timeout;  // wall time: a real wait
  std::unique_ptr<pqxx::connection> stale;            // closed outside the lock: PQfinish does I/O
  // The time this borrow waits for a release (a monotonic clock: it measures, decides nothing).
  bool waited = false;   // counted in waits_ (once per borrow)
  bool waiting = false;  // since wait_started
  std::chrono::steady_clock::time_point wait_started{};
  auto stop_waiting = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!waiting) return;
    wait_time_ += absl::FromChrono(std::chrono::steady_clock::now() - wait_started);
    waiting = false;
  };
  mu_.Lock();
  while (true) {
    if (!idle_.empty()) {
      stop_waiting();
      std::unique_ptr<pqxx::connection> conn = std::move(idle_.back());
      idle_.pop_back();
      mu_.Unlock();
      if (conn->is_open() && !ClosedByServer(*conn)) {
        acquisitions_.fetch_add(1, std::memory_order_relaxed);
        return Lease(this, std::move(conn));
      }
      // Closed while idle (the server went away): handing it out would fail the borrower's
      // first statement — and a write sent in autocommit could not tell whether it ran.
      // The slot is reused right here.
      errors_.fetch_add(1, std::memory_order_relaxed);
      stale = std::move(conn);
      stale.reset();
      mu_.Lock();
      --open_;
      continue;
    }
    if (open_ < max_size_) {
      stop_waiting();
      ++open_;  // reserve the slot so concurrent borrowers cannot overshoot max_size
      mu_.Unlock();
      absl::StatusOr<std::unique_ptr<pqxx::connection>> conn = Connect();
      if (!conn.ok()) {
        errors_.fetch_add(1, std::memory_order_relaxed);
        absl::MutexLock lock(&mu_);
        --open_;
        released_.Signal();
        return conn.status();
      }
      acquisitions_.fetch_add(1, std::memory_order_relaxed);
      return Lease(this, *std::move(conn));
    }
    if (absl::Now() >= deadline) {  // wall time: a real wait
      stop_waiting();
      mu_.Unlock();
      return absl::UnavailableError(absl::StrCat("database pool exhausted: all ", max_size_,
                                                 " connections to ", target_, " in use for ",
                                                 absl::FormatDuration(timeout)));
    }
    if (!waiting) {
      if (!waited) ++waits_;
      waited = true;
      waiting = true;
      wait_started = std::chrono::steady_clock::now();
    }
    ++waiting_;
    released_.WaitWithDeadline(&mu_, deadline);
    --waiting_;
  }
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> ConnectionPool::Connect() {
  try {
    auto conn = std::make_unique<pqxx::connection>(dsn_);
    // Reactivation would reconnect behind the holder's back, silently dropping session
    // state (SET, advisory locks, temp tables); the pool replaces lost connections instead.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    conn->inhibit_reactivation(true);
#pragma GCC diagnostic pop
    for (const auto& [name, value] : settings_) {
      try {
        pqxx::nontransaction tx(*conn);
        tx.exec_params("SELECT set_config($1, $2, false)", name, value);
      } catch (const std::exception& e) {
        return absl::UnavailableError(absl::StrCat("database ", target_, " refused setting ", name,
                                                   ": ", FirstLine(e.what())));
      }
    }
    return conn;
  } catch (const std::exception& e) {
    // libpq does not print passwords, but its text is not ours, so scrub it regardless.
    return absl::UnavailableError(absl::StrCat("cannot connect to database ", target_, ": ",
                                               ScrubPassword(FirstLine(e.what()), dsn_)));
  }
}

void ConnectionPool::Return(std::unique_ptr<pqxx::connection> conn, bool broken) {
  std::vector<std::unique_ptr<pqxx::connection>> discard;
  {
    absl::MutexLock lock(&mu_);
    if (!broken && conn->is_open()) {
      idle_.push_back(std::move(conn));
    } else {
      errors_.fetch_add(1, std::memory_order_relaxed);
      --open_;
      discard.push_back(std::move(conn));
      // A lost connection usually means the server restarted or failed over, and then the
      // idle ones are dead too; dropping them now spares the next borrowers a failed
      // attempt each.
      if (broken) {
        open_ -= static_cast<int>(idle_.size());
        for (auto& c : idle_) discard.push_back(std::move(c));
        idle_.clear();
      }
    }
    // One connection (or one free slot) serves one waiter. Waking them all would make every
    // return a stampede on mu_ when many handlers wait, each woken thread a context switch
    // that finds nothing. After a broken connection several slots may have freed at once.
    if (broken) {
      released_.SignalAll();
    } else {
      released_.Signal();
    }
  }
  // `discard` closes here, outside the lock.
}

ConnectionPool::Lease::Lease(ConnectionPool* pool, std::unique_ptr<pqxx::connection> conn)
    : pool_(pool), conn_(std::move(conn)) {}

ConnectionPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      conn_(std::move(other.conn_)),
      broken_(other.broken_) {}

ConnectionPool::Lease& ConnectionPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    conn_ = std::move(other.conn_);
    broken_ = other.broken_;
  }
  return *this;
}

ConnectionPool::Lease::~Lease() { Release(); }

void ConnectionPool::Lease::Release() noexcept {
  if (pool_ != nullptr && conn_ != nullptr) pool_->Return(std::move(conn_), broken_);
  pool_ = nullptr;
  conn_.reset();
}

}  // namespace rkl::db
