#pragma once
// rkl-mtms's own metrics (docs/mtms.md "Metrics"; names fixed by docs/operations.md).
//
// Counted as they happen, by the forwarder (ForwarderOptions::metrics):
//   rkl_mtms_forward_attempts_total    SubmitTransportKey calls to KMS
//   rkl_mtms_forward_failures_total    those that did not succeed (refused or unreachable)
//   rkl_mtms_translations_total{result}  TK translations HSM #1 answered for a package:
//                                      result "ok" or the lower-case status code
//                                      ("unauthenticated", "unavailable", ...)
//   rkl_mtms_forwarder_wakeups_total   times a background worker woke from its wait (a
//                                      Wake(), a handed-off row, the interval, a claim)
//   rkl_mtms_forwarder_empty_claims_total  claim statements that found no due row
// Read from the database at each scrape (RegisterMtmsMetrics), one statement each:
//   rkl_mtms_outbox{state}             packages by state: "received", "forwarded",
//                                      "rejected" (every state, zeros included)
//   rkl_mtms_outbox_oldest_unforwarded_age_seconds  age of the oldest RECEIVED package by
//                                      the injected clock; 0 when there is none
//   rkl_mtms_work_key_expiry_days      days from the injected clock to the CURRENT work
//                                      certificate's notAfter (negative once expired);
//                                      0 when there is no CURRENT work key
// No label carries an SN, a submission id or key material. Thread-safe.

#include "absl/status/status.h"
#include "mtms_repository.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "rkl/common/clock.h"
#include "rkl/metrics/metrics.h"

namespace rkl::mtms {

class ForwarderMetrics {
 public:
  explicit ForwarderMetrics(metrics::Metrics& metrics);

  void ForwardAttempt(const absl::Status& result);
  void Translation(const absl::Status& result);
  void Wakeup();
  void EmptyClaim();

 private:
  prometheus::Counter& attempts_;
  prometheus::Counter& failures_;
  prometheus::Family<prometheus::Counter>& translations_;
  prometheus::Counter& wakeups_;
  prometheus::Counter& empty_claims_;
};

// The scrape-time gauges above, read from `repository` on `clock`; `repository` must outlive
// `metrics`' last collection.
void RegisterMtmsMetrics(metrics::Metrics& metrics, MtmsRepository& repository, const Clock& clock);

}  // namespace rkl::mtms
