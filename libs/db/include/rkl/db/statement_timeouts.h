#pragma once
// Database deadlines of a service's connections: statement_timeout and lock_timeout, set on
// every connection of its pool (PoolOptions::settings), so that no handler keeps working on
// the database after its caller has given up — PostgreSQL cancels the statement
// (DEADLINE_EXCEEDED) or refuses the lock (ABORTED) first. Each daemon declares the two keys
// (db.statement_timeout, db.lock_timeout) with defaults below the deadline of the RPCs it
// serves (docs/operations.md "Database deadlines"). Stateless.

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "rkl/common/config.h"

namespace rkl::db {

struct StatementTimeouts {
  absl::Duration statement = absl::Seconds(4);  // zero: none (PostgreSQL's default)
  absl::Duration lock = absl::Seconds(2);       // zero: none
};

// Declares db.statement_timeout and db.lock_timeout with these defaults.
void DeclareStatementTimeoutConfig(ConfigSchema& schema, StatementTimeouts defaults = {});
StatementTimeouts StatementTimeoutsFromConfig(const Config& config);
// The (name, value) session settings for PoolOptions::settings; a zero duration adds none.
std::vector<std::pair<std::string, std::string>> StatementTimeoutSettings(
    const StatementTimeouts& timeouts);

}  // namespace rkl::db
