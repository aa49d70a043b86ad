#include "rkl/audit/refusal_counts.h"

#include <algorithm>

#include "rkl/common/json.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::audit {
namespace {

constexpr char kAddRefusalCounts[] =
    "INSERT INTO refusal_counts (interval_start_ms, sn, source, action, reason, count, "
    "last_detail) "
    "SELECT x.interval_start_ms, x.sn, x.source, x.action, x.reason, x.count, x.last_detail "
    "FROM jsonb_to_recordset($1::jsonb) AS x(interval_start_ms bigint, sn text, source text, "
    "action text, reason text, count bigint, last_detail text) "
    "ON CONFLICT (interval_start_ms, sn, source, action, reason) DO UPDATE SET "
    "count = refusal_counts.count + EXCLUDED.count, last_detail = EXCLUDED.last_detail";
constexpr char kListRefusalCounts[] =
    "SELECT interval_start_ms, sn, source, action, reason, count, last_detail "
    "FROM refusal_counts ORDER BY interval_start_ms, sn, source, action, reason";
constexpr char kPurgeRefusalCounts[] = "DELETE FROM refusal_counts WHERE interval_start_ms < $1";

}  // namespace

absl::Status AddRefusalCounts(db::ConnectionPool& pool, const std::vector<RefusalCount>& counts) {
  if (counts.empty()) return absl::OkStatus();
  JsonRows rows;
  for (const RefusalCount& c : counts) {
    rows.Row()
        .Field("interval_start_ms", c.interval_start_ms)
        .Field("sn", c.sn)
        .Field("source", c.source)
        .Field("action", c.action)
        .Field("reason", c.reason)
        .Field("count", c.count)
        .Field("last_detail", c.last_detail);
  }
  const std::string json = rows.Finish();
  return db::RunAutocommitWrite(pool, [&](db::OneStatement& stmt) -> absl::Status {
    stmt.Exec(kAddRefusalCounts, json);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<RefusalCount>> ListRefusalCounts(db::ConnectionPool& pool) {
  return db::RunAutocommitRead(
      pool, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<RefusalCount>> {
        std::vector<RefusalCount> out;
        for (const auto& row : db::Exec(tx, kListRefusalCounts)) {
          out.push_back({.interval_start_ms = row[0].as<int64_t>(),
                         .sn = row[1].as<std::string>(),
                         .source = row[2].as<std::string>(),
                         .action = row[3].as<std::string>(),
                         .reason = row[4].as<std::string>(),
                         .count = row[5].as<int64_t>(),
                         .last_detail = row[6].as<std::string>()});
        }
        return out;
      });
}

absl::StatusOr<int64_t> PurgeRefusalCounts(db::ConnectionPool& pool, int64_t before_ms) {
  return db::RunAutocommitWrite(pool, [&](db::OneStatement& stmt) -> absl::StatusOr<int64_t> {
    return static_cast<int64_t>(stmt.Exec(kPurgeRefusalCounts, before_ms).affected_rows());
  });
}

}  // namespace rkl::audit
