#pragma once
// ConnectionPool: a bounded set of libpqxx connections to one PostgreSQL database.
//
// Guarantees:
//  - thread-safe: any number of threads may Borrow() at once; at most max_size
//    connections are ever open, and they are opened lazily, on demand;
//  - a Lease owns its connection exclusively until it goes out of scope, when the
//    connection returns to the pool, unless it is broken (closed, or marked broken by the
//    holder), in which case it is closed and the next Borrow() opens a fresh one;
//  - Borrow() never hands out an idle connection the server has already closed (a restart,
//    a terminated backend): a zero-timeout poll of its socket finds it, and a fresh one is
//    opened in its place;
//  - Borrow() waits at most the timeout for a free slot, then fails with UNAVAILABLE
//    "database pool exhausted"; a connection that cannot be opened fails with UNAVAILABLE;
//    no status or message ever contains the DSN's password;
//  - libpqxx's silent reconnection is disabled, so session state cannot vanish under a
//    lease: a lost connection surfaces as an error and is replaced by the pool;
//  - stats() counts what the pool did (acquisitions, waits and their time, connection
//    errors) for the metrics (rkl/db/pool_metrics.h); keeping count costs no lock a borrow
//    does not already take, and the clock is read only by a borrow that has to wait.
// The pool must outlive every Lease it hands out. Not copyable or movable.
//
// Conventions for code holding a connection: every query is parameterised
// (pqxx::transaction_base::exec_params with $1, $2, ...), never assembled from values, so
// no input can change a statement and values stay out of statement text; only identifiers
// we control (schema and table names) may be spliced in, quoted. Use SET LOCAL rather than
// SET: a connection is shared by later, unrelated leases.

#include <atomic>
#include <cstdint>
#include <memory>
#include <pqxx/connection>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace rkl::db {

struct PoolOptions {
  // libpq DSN, key=value or postgresql:// URI. Include connect_timeout=N: without it a
  // black-holed host blocks a borrower for the kernel's TCP timeout.
  std::string dsn;
  int max_size = 8;
  // How long Borrow() waits for a connection when all max_size are leased.
  absl::Duration borrow_timeout = absl::Seconds(5);
  // Session settings (name, value) made on every new connection before it is lent, e.g.
  // {"plan_cache_mode", "force_generic_plan"}. A setting PostgreSQL refuses makes the
  // connection attempt fail (UNAVAILABLE naming the setting).
  std::vector<std::pair<std::string, std::string>> settings = {};
};

// What a pool holds now and has done since it was made (ConnectionPool::stats()).
struct PoolStats {
  int max_size = 0;
  int in_use = 0;  // leased, or being opened for a borrower
  int idle = 0;
  uint64_t acquisitions = 0;  // successful Borrow() calls
  uint64_t waits = 0;         // Borrow() calls that found every connection leased and waited
  double wait_seconds = 0;    // the time those calls waited, together
  // Connections that could not be opened (or refused a session setting), that a holder
  // returned broken or closed, or that the server had closed while they sat idle.
  uint64_t errors = 0;
};

class ConnectionPool {
 public:
  class Lease;

  // Does not connect: the first Borrow() does.
  explicit ConnectionPool(PoolOptions options);
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;
  ~ConnectionPool();

  // Waits up to options.borrow_timeout.
  absl::StatusOr<Lease> Borrow();
  absl::StatusOr<Lease> Borrow(absl::Duration timeout);

  int max_size() const { return max_size_; }
  // Connections currently open, leased or idle.
  int open_connections() const;
  int idle_connections() const;
  // Borrow() calls waiting for a connection right now (all max_size leased).
  int waiting_borrowers() const;
  PoolStats stats() const;
  // The DSN with its password redacted, for logs.
  const std::string& redacted_dsn() const { return redacted_dsn_; }

 private:
  friend class Lease;

  absl::StatusOr<std::unique_ptr<pqxx::connection>> Connect();
  void Return(std::unique_ptr<pqxx::connection> conn, bool broken);

  const std::string dsn_;
  const std::vector<std::pair<std::string, std::string>> settings_;
  const std::string redacted_dsn_;
  const std::string target_;  // host/port/dbname/user, for messages
  const absl::Status dsn_status_;
  const int max_size_;
  const absl::Duration borrow_timeout_;

  mutable absl::Mutex mu_;
  absl::CondVar released_;  // a connection went idle or a slot freed up
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;  // idle + leased + being opened
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t waits_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration wait_time_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> acquisitions_{0};
  std::atomic<uint64_t> errors_{0};
};

// Exclusive use of one pooled connection; returns it on destruction. Move-only.
class ConnectionPool::Lease {
 public:
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  pqxx::connection& connection() const { return *conn_; }
  pqxx::connection& operator*() const { return *conn_; }
  pqxx::connection* operator->() const { return conn_.get(); }

  // The connection is in an unknown state (lost, or a protocol error): close it instead of
  // handing it to the next borrower.
  void MarkBroken() { broken_ = true; }

 private:
  friend class ConnectionPool;
  Lease(ConnectionPool* pool, std::unique_ptr<pqxx::connection> conn);
  void Release() noexcept;

  ConnectionPool* pool_;
  std::unique_ptr<pqxx::connection> conn_;
  bool broken_ = false;
};

}  // namespace rkl::db
