#pragma once
// The audit chain's health as Prometheus gauges (docs/operations.md, "Metrics"), read from
// the chain's tables when Prometheus scrapes — nothing polls in the background:
//
//   rkl_audit_chain_records{chain}               sealed records in the chain (its last seq)
//   rkl_audit_pending_records{chain}             records written but not chained yet
//   rkl_audit_oldest_pending_age_seconds{chain}  now − the oldest pending record's time
//                                                (0 when none is pending)
//   rkl_audit_seconds_since_last_seal{chain}     now − the newest chained record's time (0
//                                                for an empty chain)
//
// A healthy chain has few pending records, none older than a few seal intervals: a growing
// pending count or age means the sealer is not running (or failing), and records written
// since then are covered by their own MACs only (docs/hsm.md, "Audit").
//
// Every daemon with a chain calls RegisterAuditChainMetrics once at start-up with its pool,
// its ChainSpec and its label:
//   rkl-hsm  RegisterAuditChainMetrics(metrics, pool, audit_log.spec(), "hsm", clock)
//   rkl-kms  RegisterAuditChainMetrics(metrics, pool, kms::KmsAuditChain(), "kms", clock)
//   rkl-mtms RegisterAuditChainMetrics(metrics, pool, <MTMS's ChainSpec>, "mtms", clock)
//
// Cost per scrape: one read-only statement on one connection of `pool` — the chain's
// newest row by its primary key, and count(*)/min(at_ms) over the pending table (which the
// sealer keeps a few records long). The pool, the metrics and everything they reference
// must outlive the process's scrapes (register after creating the pool, before serving).

#include <string>

#include "rkl/audit/audit_chain.h"
#include "rkl/common/clock.h"
#include "rkl/db/connection_pool.h"
#include "rkl/metrics/metrics.h"

namespace rkl::audit {

// Registers the four gauges with label chain=`chain_label` ("hsm", "kms", "mtms") and a
// refresher (source "audit_<chain_label>") that reads `spec`'s chain_table (seq, at_ms)
// and pending_table (at_ms) through `pool`; ages are computed from `clock` (rkl::Clock: the
// daemon's SystemClock(), a test's FakeClock). A failed read keeps the previous values and
// counts rkl_metrics_refresh_errors_total{source="audit_<chain_label>"}.
void RegisterAuditChainMetrics(metrics::Metrics& metrics, db::ConnectionPool& pool,
                               const ChainSpec& spec, std::string chain_label, Clock clock);

}  // namespace rkl::audit
