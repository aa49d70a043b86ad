#pragma once
// The one place where libpqxx / PostgreSQL failures become absl::Status.
//
// Guarantees:
//  - every status message is built from the SQLSTATE, a fixed description and, for
//    integrity violations, the constraint name; never from the server's message text,
//    which can quote parameter values (a duplicate key, an unparsable input) and so could
//    carry identifiers or key material into logs and RPC errors;
//  - codes follow the Abseil guidance: UNAVAILABLE when the same call may simply be
//    retried, ABORTED when a conflict means the caller should retry a larger unit,
//    FAILED_PRECONDITION when nothing works until someone fixes the data.
// Stateless; safe from any thread.

#include <exception>

#include "absl/status/status.h"

namespace rkl::db {

struct DbError {
  absl::Status status;
  // The whole transaction may run again unchanged: serialization failure, deadlock, or a
  // connection lost before COMMIT was sent.
  bool retryable = false;
  // The connection the error came from is unusable and must not go back to a pool.
  bool connection_lost = false;
};

//   unique_violation (23505)                          → ALREADY_EXISTS
//   foreign_key / check / restrict violation          → FAILED_PRECONDITION
//   serialization_failure (40001), deadlock (40P01)   → ABORTED, retryable
//   broken connection, class 08, 57P01..57P03         → UNAVAILABLE, retryable
//   connection lost during COMMIT (outcome unknown)   → UNKNOWN, not retryable
//   query_canceled (57014, statement_timeout)         → DEADLINE_EXCEEDED
//   anything else                                     → INTERNAL
DbError ClassifyException(const std::exception& e);

inline absl::Status StatusFromException(const std::exception& e) {
  return ClassifyException(e).status;
}

}  // namespace rkl::db
