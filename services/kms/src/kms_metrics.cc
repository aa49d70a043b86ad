#include "kms_metrics.h"

namespace rkl::kms {
namespace {

prometheus::Counter* Counter(metrics::Metrics& metrics, const char* name, const char* help,
                             const prometheus::Labels& labels = {}) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(metrics.registry()).Add(labels);
}

}  // namespace

KmsMetrics KmsMetrics::Register(metrics::Metrics& metrics) {
  constexpr char kTkWaits[] = "rkl_kms_tk_waits_total";
  constexpr char kTkWaitsHelp[] =
      "BeginAuthentication calls that waited for an SN's transport key, by how the wait ended";
  constexpr char kDeliveries[] = "rkl_kms_tmk_deliveries_total";
  constexpr char kDeliveriesHelp[] =
      "TMKs delivered to terminals: TR-31 blocks under TEK (patent) or TR-34 key tokens (tr34)";
  return KmsMetrics{
      .auth_failures = Counter(metrics, "rkl_kms_auth_failures_total",
                               "Terminal proofs that did not verify (Crnd2, install proofs)"),
      .lockouts = Counter(metrics, "rkl_kms_lockouts_total",
                          "Terminals locked after too many consecutive failed proofs"),
      .rate_limited = Counter(metrics, "rkl_kms_rate_limited_total",
                              "Terminal calls refused by the per-address or per-SN budget"),
      .patent_deliveries = Counter(metrics, kDeliveries, kDeliveriesHelp, {{"protocol", "patent"}}),
      .tr34_deliveries = Counter(metrics, kDeliveries, kDeliveriesHelp, {{"protocol", "tr34"}}),
      .tk_waits_arrived = Counter(metrics, kTkWaits, kTkWaitsHelp, {{"result", "arrived"}}),
      .tk_waits_deadline = Counter(metrics, kTkWaits, kTkWaitsHelp, {{"result", "deadline"}}),
      .tk_waits_over_capacity =
          Counter(metrics, kTkWaits, kTkWaitsHelp, {{"result", "over_capacity"}}),
      .tk_waiters = &prometheus::BuildGauge()
                         .Name("rkl_kms_tk_waiters")
                         .Help("BeginAuthentication calls waiting for an SN's transport key now")
                         .Register(metrics.registry())
                         .Add({}),
  };
}

}  // namespace rkl::kms
