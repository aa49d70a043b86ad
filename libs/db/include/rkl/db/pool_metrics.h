#pragma once
// The metrics of a ConnectionPool (docs/operations.md, "Metrics"), read from its stats() at
// every scrape; each series carries label pool = the short name the daemon gives the pool
// ("main", "audit"):
//   rkl_db_pool_connections{pool,state="in_use"|"idle"}  gauge
//   rkl_db_pool_size{pool}                               gauge (max_size)
//   rkl_db_pool_acquisitions_total{pool}                 counter
//   rkl_db_pool_waits_total{pool}                        counter (borrows that had to wait)
//   rkl_db_pool_wait_seconds_total{pool}                 counter
//   rkl_db_errors_total{pool}                            counter (connection failures and
//                                                        broken connections)
// The pool must outlive `metrics`' last collection (declare Metrics before the pool).

#include <string>

#include "rkl/db/connection_pool.h"
#include "rkl/metrics/metrics.h"

namespace rkl::db {

void RegisterPoolMetrics(metrics::Metrics& metrics, const ConnectionPool& pool,
                         std::string pool_name);

}  // namespace rkl::db
