#pragma once
// rkl-kms's gauges read from its database when Prometheus scrapes (docs/kms.md, "Metrics"):
//   rkl_kms_terminals{state,protocol}  terminals by state (lower-case TerminalState:
//                                      "tk_received", ..., "rekey_pending") and protocol
//                                      ("patent", "tr34"); every combination, zeros included
//   rkl_kms_sessions_open              authentication sessions in progress (OPEN, VERIFYING,
//                                      AUTHENTICATED, CONFIRMING) and not expired by `clock`
// Cost per scrape: one statement on one connection of `pool` — a GROUP BY over terminals
// and a count over auth_sessions (which PurgeExpiredSessions keeps to the last minutes).

#include "rkl/common/clock.h"
#include "rkl/db/connection_pool.h"
#include "rkl/metrics/metrics.h"

namespace rkl::kms {

// Registers both gauges and their refresher (source "kms_terminals"). `pool` must outlive
// the scrapes of `metrics`.
void RegisterKmsStateMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool, Clock clock);

}  // namespace rkl::kms
