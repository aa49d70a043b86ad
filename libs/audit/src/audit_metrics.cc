#include "rkl/audit/audit_metrics.h"

#include <algorithm>
#include <cstdint>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "prometheus/gauge.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::audit {
namespace {

prometheus::Gauge& ChainGauge(metrics::Metrics& metrics, const char* name, const char* help,
                              const std::string& chain_label) {
  return prometheus::BuildGauge()
      .Name(name)
      .Help(help)
      .Register(metrics.registry())
      .Add({{"chain", chain_label}});
}

// Seconds from `from_ms` to `now_ms`, never negative (a record stamped by a replica whose
// clock runs ahead).
double AgeSeconds(int64_t now_ms, int64_t from_ms) {
  return static_cast<double>(std::max<int64_t>(0, now_ms - from_ms)) / 1000.0;
}

}  // namespace

void RegisterAuditChainMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool,
                               const ChainSpec& spec, std::string chain_label, Clock clock) {
  prometheus::Gauge& records = ChainGauge(
      metrics, "rkl_audit_chain_records",
      "Records sealed into the audit chain (the chain's last sequence number)", chain_label);
  prometheus::Gauge& pending =
      ChainGauge(metrics, "rkl_audit_pending_records",
                 "Audit records written but not yet MAC-chained by the sealer", chain_label);
  prometheus::Gauge& oldest_pending = ChainGauge(
      metrics, "rkl_audit_oldest_pending_age_seconds",
      "Age of the oldest audit record waiting to be chained (0 when none is pending)", chain_label);
  prometheus::Gauge& since_seal =
      ChainGauge(metrics, "rkl_audit_seconds_since_last_seal",
                 "Seconds since the time of the newest chained audit record (0 for an empty chain)",
                 chain_label);
  // The newest chained record by the primary key (an index's last entry); the pending table
  // is what the sealer has not chained yet, a few records when it runs.
  std::string sql = absl::StrCat(
      "SELECT head.seq, head.at_ms, p.n, p.oldest_ms FROM (SELECT 1) AS one "
      "LEFT JOIN LATERAL (SELECT seq, at_ms FROM ",
      spec.chain_table,
      " ORDER BY seq DESC LIMIT 1) AS head ON true "
      "CROSS JOIN LATERAL (SELECT count(*) AS n, min(at_ms) AS oldest_ms FROM ",
      spec.pending_table, ") AS p");
  metrics.OnCollect(
      absl::StrCat("audit_", chain_label),
      [&pool, sql = std::move(sql), clock = std::move(clock), &records, &pending, &oldest_pending,
       &since_seal]() -> absl::Status {
        struct Read {
          int64_t seq = 0, head_at_ms = 0, pending = 0, oldest_ms = 0;
          bool has_head = false, has_pending = false;
        };
        absl::StatusOr<Read> read =
            db::RunAutocommitRead(pool, [&](pqxx::nontransaction& tx) -> absl::StatusOr<Read> {
              pqxx::row row = db::Exec1(tx, sql);
              Read r;
              r.has_head = !row[0].is_null();
              if (r.has_head) {
                r.seq = row[0].as<int64_t>();
                r.head_at_ms = row[1].as<int64_t>();
              }
              r.pending = row[2].as<int64_t>();
              r.has_pending = !row[3].is_null();
              if (r.has_pending) r.oldest_ms = row[3].as<int64_t>();
              return r;
            });
        if (!read.ok()) return read.status();
        const int64_t now_ms = NowUnixMs(clock);
        records.Set(static_cast<double>(read->seq));
        pending.Set(static_cast<double>(read->pending));
        oldest_pending.Set(read->has_pending ? AgeSeconds(now_ms, read->oldest_ms) : 0.0);
        since_seal.Set(read->has_head ? AgeSeconds(now_ms, read->head_at_ms) : 0.0);
        return absl::OkStatus();
      });
}

}  // namespace rkl::audit
