#include "rkl/db/transaction.h"

#include <algorithm>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "rkl/db/errors.h"

namespace rkl::db::internal {
namespace {

struct AttemptResult {
  absl::Status status;
  bool retryable = false;
  bool connection_lost = false;
};

// pqxx::work always begins READ COMMITTED READ WRITE; SET TRANSACTION as the first
// statement changes that, which keeps fn's parameter one type whatever the options.
std::string SetTransactionStatement(const TransactionOptions& options) {
  std::string modes;
  switch (options.isolation) {
    case IsolationLevel::kReadCommitted:
      break;
    case IsolationLevel::kRepeatableRead:
      modes = "ISOLATION LEVEL REPEATABLE READ";
      break;
    case IsolationLevel::kSerializable:
      modes = "ISOLATION LEVEL SERIALIZABLE";
      break;
  }
  if (options.read_only) modes = modes.empty() ? "READ ONLY" : absl::StrCat(modes, ", READ ONLY");
  return modes.empty() ? "" : absl::StrCat("SET TRANSACTION ", modes);
}

AttemptResult RunAttempt(pqxx::connection& conn, const std::string& set_transaction,
                         absl::FunctionRef<absl::Status(pqxx::work&)> body) {
  try {
    pqxx::work tx(conn);
    if (!set_transaction.empty()) tx.exec(set_transaction);
    absl::Status status = body(tx);
    if (!status.ok()) {
      tx.abort();
      return {std::move(status)};
    }
    tx.commit();
    return {absl::OkStatus()};
  } catch (const std::exception& e) {
    // pqxx::work's destructor has rolled back by the time we get here.
    DbError error = ClassifyException(e);
    return {std::move(error.status), error.retryable, error.connection_lost};
  }
}

AttemptResult RunReadAttempt(pqxx::connection& conn,
                             absl::FunctionRef<absl::Status(pqxx::nontransaction&)> body) {
  try {
    pqxx::nontransaction tx(conn);
    return {body(tx)};
  } catch (const std::exception& e) {
    DbError error = ClassifyException(e);
    // Nothing was written, so a read whose connection broke at any point may run again
    // (ClassifyException's in-doubt case is about COMMIT, which a read never sends).
    return {std::move(error.status), error.retryable || error.connection_lost,
            error.connection_lost};
  }
}

AttemptResult RunWriteAttempt(pqxx::connection& conn,
                              absl::FunctionRef<absl::Status(OneStatement&)> body) {
  try {
    pqxx::nontransaction tx(conn);
    OneStatement statement(tx);
    return {body(statement)};
  } catch (const std::exception& e) {
    DbError error = ClassifyException(e);
    if (error.connection_lost) {
      // The statement may have run and committed before the answer was lost.
      return {absl::UnknownError("database connection lost during an autocommit write: it may "
                                 "have committed"),
              false, true};
    }
    return {std::move(error.status), error.retryable, false};
  }
}

absl::Duration Backoff(const TransactionOptions& options, int failed_attempts) {
  absl::Duration ceiling = options.initial_backoff;
  for (int i = 1; i < failed_attempts && ceiling < options.max_backoff; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, options.max_backoff);
  // "Equal jitter": half fixed, half random, so colliding transactions spread out but
  // each still waits a little.
  thread_local std::minstd_rand rng{std::random_device{}()};
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return ceiling * jitter(rng);
}

// Borrows a connection and runs `attempt` on it, again on a (possibly new) connection with
// backoff while it fails retryably, up to options.max_attempts runs in all.
absl::Status RetryAttempts(ConnectionPool& pool, const TransactionOptions& options,
                           absl::FunctionRef<AttemptResult(pqxx::connection&)> attempt) {
  const int max_attempts = std::max(1, options.max_attempts);
  TransactionStats local_stats;
  TransactionStats& stats = options.stats != nullptr ? *options.stats : local_stats;
  stats = {};

  absl::Status last;
  for (int n = 1; n <= max_attempts; ++n) {
    if (n > 1) absl::SleepFor(Backoff(options, n - 1));
    absl::StatusOr<ConnectionPool::Lease> lease =
        options.borrow_timeout ? pool.Borrow(*options.borrow_timeout) : pool.Borrow();
    // Borrow already waited for a slot, and a refused connection is for the caller to
    // retry later: neither is retried here.
    if (!lease.ok()) return lease.status();
    stats.attempts = n;
    AttemptResult result = attempt(lease->connection());
    if (result.connection_lost) lease->MarkBroken();
    if (result.status.ok() || !result.retryable) return result.status;
    last = std::move(result.status);
  }
  return absl::Status(last.code(),
                      absl::StrCat(last.message(), " (gave up after ", max_attempts, " attempts)"));
}

}  // namespace

absl::Status RunInTransactionImpl(ConnectionPool& pool,
                                  absl::FunctionRef<absl::Status(pqxx::work&)> body,
                                  const TransactionOptions& options) {
  const std::string set_transaction = SetTransactionStatement(options);
  return RetryAttempts(pool, options, [&](pqxx::connection& conn) {
    return RunAttempt(conn, set_transaction, body);
  });
}

absl::Status RunAutocommitReadImpl(ConnectionPool& pool,
                                   absl::FunctionRef<absl::Status(pqxx::nontransaction&)> body,
                                   const TransactionOptions& options) {
  return RetryAttempts(pool, options,
                       [&](pqxx::connection& conn) { return RunReadAttempt(conn, body); });
}

absl::Status RunAutocommitWriteImpl(ConnectionPool& pool,
                                    absl::FunctionRef<absl::Status(OneStatement&)> body,
                                    const TransactionOptions& options) {
  return RetryAttempts(pool, options,
                       [&](pqxx::connection& conn) { return RunWriteAttempt(conn, body); });
}

}  // namespace rkl::db::internal
