#pragma once
// RunInTransaction: run a unit of work in one PostgreSQL transaction, retrying it whole on
// the failures where that is safe.
//
// Guarantees:
//  - fn runs inside a transaction at the requested isolation level; RunInTransaction
//    commits when fn returns OK and rolls back when fn returns an error or throws;
//  - on serialization failure (40001), deadlock (40P01) or a connection lost before COMMIT
//    the transaction is rolled back and fn runs again on a (possibly new) connection, up
//    to max_attempts times in all, with jittered exponential backoff in between. So fn may
//    run more than once: it must not have effects outside the transaction that cannot be
//    repeated, and it must not commit or abort the transaction itself;
//  - exceptions are converted once, by ClassifyException (errors.h): fn's own errors are
//    returned as fn returned them, and no message contains parameter values;
//  - a connection lost during COMMIT is reported as UNKNOWN and never retried, because
//    the transaction may have committed.
// Thread-safe as far as the pool is; fn runs on the calling thread.
//
// As everywhere in rkl::db, queries inside fn are parameterised (exec_params), never built
// from values.

#include <functional>
#include <optional>
#include <pqxx/except>
#include <pqxx/nontransaction>
#include <pqxx/transaction>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/prepared.h"

namespace rkl::db {

enum class IsolationLevel { kReadCommitted, kRepeatableRead, kSerializable };

// What happened during one RunInTransaction call, for tests and metrics.
struct TransactionStats {
  int attempts = 0;  // times fn was started; attempts - 1 retries
};

struct TransactionOptions {
  IsolationLevel isolation = IsolationLevel::kReadCommitted;
  bool read_only = false;
  // Total runs of fn, first included. 1 disables retries.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(5);
  absl::Duration max_backoff = absl::Milliseconds(250);
  // Borrow timeout for each attempt; unset means the pool's default.
  std::optional<absl::Duration> borrow_timeout = std::nullopt;
  // When set, filled in before RunInTransaction returns.
  TransactionStats* stats = nullptr;
};

// The one statement of a RunAutocommitWrite attempt, run as a prepared statement (db::Exec).
// A second Exec throws (pqxx::usage_error) before anything is sent: the first has committed
// on its own by then, so a body needing two statements belongs in RunInTransaction.
class OneStatement {
 public:
  explicit OneStatement(pqxx::nontransaction& tx) : tx_(tx) {}
  OneStatement(const OneStatement&) = delete;
  OneStatement& operator=(const OneStatement&) = delete;

  template <typename... Args>
  pqxx::result Exec(std::string_view sql, Args&&... args) {
    Claim();
    return db::Exec(tx_, sql, std::forward<Args>(args)...);
  }
  template <typename... Args>
  pqxx::row Exec1(std::string_view sql, Args&&... args) {
    Claim();
    return db::Exec1(tx_, sql, std::forward<Args>(args)...);
  }

 private:
  void Claim() {
    if (used_) throw pqxx::usage_error("RunAutocommitWrite: a second statement in one write");
    used_ = true;
  }
  pqxx::nontransaction& tx_;
  bool used_ = false;
};

namespace internal {
absl::Status RunInTransactionImpl(ConnectionPool& pool,
                                  absl::FunctionRef<absl::Status(pqxx::work&)> body,
                                  const TransactionOptions& options);
absl::Status RunAutocommitReadImpl(ConnectionPool& pool,
                                   absl::FunctionRef<absl::Status(pqxx::nontransaction&)> body,
                                   const TransactionOptions& options);
absl::Status RunAutocommitWriteImpl(ConnectionPool& pool,
                                    absl::FunctionRef<absl::Status(OneStatement&)> body,
                                    const TransactionOptions& options);

template <typename T>
struct IsStatusOr : std::false_type {};
template <typename T>
struct IsStatusOr<absl::StatusOr<T>> : std::true_type {};

// Runs `fn` (returning absl::Status or absl::StatusOr<T>) through `impl`, one of the Impl
// functions above with `Tx` its body's argument, and returns fn's result. For a StatusOr,
// each attempt's value replaces the previous one's, so a retry never sees a stale value.
template <typename Tx, typename Fn, typename Impl>
auto RunReturning(ConnectionPool& pool, Fn& fn, const TransactionOptions& options, Impl impl)
    -> std::invoke_result_t<Fn&, Tx&> {
  using Result = std::invoke_result_t<Fn&, Tx&>;
  if constexpr (std::is_same_v<Result, absl::Status>) {
    return impl(pool, fn, options);
  } else {
    static_assert(IsStatusOr<Result>::value, "fn must return absl::Status or absl::StatusOr<T>");
    std::optional<Result> result;
    absl::Status status = impl(
        pool,
        [&](Tx& tx) -> absl::Status {
          result.reset();
          result.emplace(std::invoke(fn, tx));
          return result->status();
        },
        options);
    if (!status.ok()) return Result(std::move(status));
    return *std::move(result);
  }
}
}  // namespace internal

// fn: absl::Status(pqxx::work&) or absl::StatusOr<T>(pqxx::work&); the result type is
// fn's. An OK result means the transaction committed.
template <typename Fn>
auto RunInTransaction(ConnectionPool& pool, Fn&& fn, const TransactionOptions& options = {})
    -> std::invoke_result_t<Fn&, pqxx::work&> {
  return internal::RunReturning<pqxx::work>(pool, fn, options, internal::RunInTransactionImpl);
}

// The same in a READ ONLY transaction: writes fail (SQLSTATE 25006 → INTERNAL), and
// PostgreSQL can drop a SERIALIZABLE read-only transaction's conflict tracking early.
template <typename Fn>
auto RunInReadOnlyTransaction(ConnectionPool& pool, Fn&& fn, TransactionOptions options = {}) {
  options.read_only = true;
  return RunInTransaction(pool, std::forward<Fn>(fn), options);
}

// RunAutocommitRead: fn runs read-only statements in autocommit mode, typically one: one round
// trip to PostgreSQL instead of four (BEGIN, SET TRANSACTION READ ONLY, the statement,
// COMMIT). One statement sees one snapshot, so its result is as consistent as inside a
// read-only transaction. Several statements each see their own snapshot — exactly what
// READ COMMITTED gives the statements of one transaction — so use it for several reads
// only when they need no common snapshot; otherwise RunInReadOnlyTransaction. Writes do
// not belong here (each would commit on its own).
// Retried as RunInTransaction is, and also after a lost connection whatever the moment,
// since nothing was written. options.isolation and options.read_only are not used.
template <typename Fn>
auto RunAutocommitRead(ConnectionPool& pool, Fn&& fn, const TransactionOptions& options = {})
    -> std::invoke_result_t<Fn&, pqxx::nontransaction&> {
  static_assert(internal::IsStatusOr<std::invoke_result_t<Fn&, pqxx::nontransaction&>>::value,
                "fn must return absl::StatusOr<T>");
  return internal::RunReturning<pqxx::nontransaction>(pool, fn, options,
                                                      internal::RunAutocommitReadImpl);
}

// RunAutocommitWrite: fn runs ONE data-modifying statement (data-modifying CTEs may touch
// several tables) in autocommit mode. PostgreSQL runs a lone statement as a transaction of
// its own, so it is atomic, and under synchronous_commit it is durable by the time its
// result arrives — what RunInTransaction gives a one-statement body, in one round trip
// instead of three (BEGIN, the statement, COMMIT). fn gets a OneStatement, which refuses
// a second statement (INTERNAL).
// Retried as RunInTransaction is on serialization failure and deadlock: PostgreSQL rolled
// the statement back. A connection lost while the statement was outstanding is UNKNOWN
// and never retried — the statement may have committed, exactly as a COMMIT whose answer
// was lost (the pool does not lend a connection the server had already closed, so a
// restart of PostgreSQL does not cause this). options.isolation and options.read_only are
// not used.
template <typename Fn>
auto RunAutocommitWrite(ConnectionPool& pool, Fn&& fn, const TransactionOptions& options = {})
    -> std::invoke_result_t<Fn&, OneStatement&> {
  return internal::RunReturning<OneStatement>(pool, fn, options, internal::RunAutocommitWriteImpl);
}

}  // namespace rkl::db
