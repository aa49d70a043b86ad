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

std::string OrAny(std::string_view v, size_t max) {
  return v.empty() || v.size() > max ? std::string(kAny) : std::string(v);
}

}  // namespace

void RefusalTally::Count(int64_t now_ms, std::string_view sn, std::string_view source,
                         std::string_view action, const absl::Status& refusal) {
  const int64_t minute =
      now_ms - (now_ms % kIntervalMs + kIntervalMs) % kIntervalMs;  // floor, also before 1970
  Identity id{OrAny(sn, 32), OrAny(source, kMaxSourceBytes), std::string(action),
              refusal.ok() ? "OK" : absl::StatusCodeToString(refusal.code())};
  absl::MutexLock lock(&mu_);
  if (minute != minute_) {
    minute_ = minute;
    seen_this_minute_.clear();
  }
  if (!seen_this_minute_.contains(id)) {
    if (seen_this_minute_.size() >= max_keys_) {
      std::get<0>(id) = kAny;
      std::get<1>(id) = kAny;
    }
    seen_this_minute_.insert(id);
  }
  auto& [id_sn, id_source, id_action, id_reason] = id;
  Key key{minute, id_sn, id_source, id_action, id_reason};
  auto it = pending_.find(key);
  if (it == pending_.end()) {
    it = pending_
             .try_emplace(std::move(key), RefusalCount{.interval_start_ms = minute,
                                                       .sn = id_sn,
                                                       .source = id_source,
                                                       .action = id_action,
                                                       .reason = id_reason,
                                                       .count = 0,
                                                       .last_detail = {}})
             .first;
  }
  ++it->second.count;
  const absl::string_view message = refusal.message();
  it->second.last_detail.assign(message.data(), std::min(message.size(), kMaxDetailBytes));
}

absl::StatusOr<int64_t> RefusalTally::Flush(const Writer& write) {
  std::map<Key, RefusalCount> taken;
  {
    absl::MutexLock lock(&mu_);
    taken.swap(pending_);
  }
  if (taken.empty()) return 0;
  std::vector<RefusalCount> counts;
  counts.reserve(taken.size());
  int64_t total = 0;
  for (const auto& [key, count] : taken) {
    total += count.count;
    counts.push_back(count);
  }
  if (absl::Status s = write(counts); !s.ok()) {
    absl::MutexLock lock(&mu_);
    for (auto& [key, count] : taken) {
      auto [it, inserted] = pending_.emplace(key, count);
      if (!inserted) it->second.count += count.count;
    }
    return s;
  }
  return total;
}

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
