#include "rkl/db/statement_timeouts.h"

#include "absl/strings/str_cat.h"

namespace rkl::db {
namespace {

std::string Millis(absl::Duration d) {
  return absl::StrCat(absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1))), "ms");
}

}  // namespace

void DeclareStatementTimeoutConfig(ConfigSchema& schema, StatementTimeouts defaults) {
  schema
      .Duration("db.statement_timeout",
                "longest a database statement may run before PostgreSQL cancels it; keep it "
                "below the deadline callers give this service's RPCs (0: no limit)")
      .Default(absl::FormatDuration(defaults.statement));
  schema
      .Duration("db.lock_timeout",
                "longest a database statement may wait for a lock; below db.statement_timeout "
                "(0: no limit)")
      .Default(absl::FormatDuration(defaults.lock));
}

StatementTimeouts StatementTimeoutsFromConfig(const Config& config) {
  return StatementTimeouts{.statement = config.GetDuration("db.statement_timeout"),
                           .lock = config.GetDuration("db.lock_timeout")};
}

std::vector<std::pair<std::string, std::string>> StatementTimeoutSettings(
    const StatementTimeouts& timeouts) {
  std::vector<std::pair<std::string, std::string>> out;
  if (timeouts.statement > absl::ZeroDuration()) {
    out.emplace_back("statement_timeout", Millis(timeouts.statement));
  }
  if (timeouts.lock > absl::ZeroDuration()) out.emplace_back("lock_timeout", Millis(timeouts.lock));
  return out;
}

}  // namespace rkl::db
