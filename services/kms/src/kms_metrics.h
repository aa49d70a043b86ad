#pragma once
// rkl-kms's own metrics (docs/kms.md, "Metrics"), besides the RPC, process, database pool and
// audit chain metrics every daemon has. The counters, which KmsCore and KmsGrpcService move
// as the events happen:
//   rkl_kms_auth_failures_total           failed proofs: a Crnd2 or an install proof (patent
//                                         or TR-34) that did not verify
//   rkl_kms_lockouts_total                terminals locked after lockout_threshold failures
//   rkl_kms_rate_limited_total            terminal calls refused by the per-address / per-SN
//                                         budgets (TerminalRateLimits) before any work
//   rkl_kms_tmk_deliveries_total{protocol} TMKs delivered: a TR-31 block under TEK (patent,
//                                         CompleteAuthentication) or a key token (tr34,
//                                         RequestKeyToken)
//   rkl_kms_tk_waits_total{result}        BeginAuthentication calls that waited for an SN's
//                                         transport key (wait_ms): "arrived", "deadline"
//                                         (none came in time), "over_capacity" (answered at
//                                         once: authentication.tk_wait_max_waiters wait)
// the gauge rkl_kms_tk_waiters (calls waiting for a TK now), KmsCore moves it too,
// and the gauges read from the database when Prometheus scrapes (RegisterKmsStateMetrics,
// kms_pg_metrics.h): rkl_kms_terminals{state,protocol}, rkl_kms_sessions_open.
// No label carries an SN: protocol is "patent" or "tr34".

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "rkl/metrics/metrics.h"

namespace rkl::kms {

// The counters, or null (nothing counted: the default, for tests that do not look).
struct KmsMetrics {
  prometheus::Counter* auth_failures = nullptr;
  prometheus::Counter* lockouts = nullptr;
  prometheus::Counter* rate_limited = nullptr;
  prometheus::Counter* patent_deliveries = nullptr;       // rkl_kms_tmk_deliveries_total{patent}
  prometheus::Counter* tr34_deliveries = nullptr;         // rkl_kms_tmk_deliveries_total{tr34}
  prometheus::Counter* tk_waits_arrived = nullptr;        // rkl_kms_tk_waits_total{arrived}
  prometheus::Counter* tk_waits_deadline = nullptr;       // rkl_kms_tk_waits_total{deadline}
  prometheus::Counter* tk_waits_over_capacity = nullptr;  // ...{over_capacity}
  prometheus::Gauge* tk_waiters = nullptr;                // rkl_kms_tk_waiters

  // The counters in `metrics`' registry (at zero until something happens).
  static KmsMetrics Register(metrics::Metrics& metrics);
};

// One more, when counted at all.
inline void Count(prometheus::Counter* counter) {
  if (counter != nullptr) counter->Increment();
}

}  // namespace rkl::kms
