#include "mtms_metrics.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "prometheus/gauge.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/x509.h"

namespace rkl::mtms {

ForwarderMetrics::ForwarderMetrics(metrics::Metrics& metrics)
    : attempts_(prometheus::BuildCounter()
                    .Name("rkl_mtms_forward_attempts_total")
                    .Help("Packages sent to KMS (SubmitTransportKey calls)")
                    .Register(metrics.registry())
                    .Add({})),
      failures_(prometheus::BuildCounter()
                    .Name("rkl_mtms_forward_failures_total")
                    .Help("SubmitTransportKey calls to KMS that failed (refused or unreachable)")
                    .Register(metrics.registry())
                    .Add({})),
      translations_(prometheus::BuildCounter()
                        .Name("rkl_mtms_translations_total")
                        .Help("Transport key translations HSM #1 answered, by result")
                        .Register(metrics.registry())),
      wakeups_(prometheus::BuildCounter()
                   .Name("rkl_mtms_forwarder_wakeups_total")
                   .Help("Times a background forwarder worker woke from its wait")
                   .Register(metrics.registry())
                   .Add({})),
      empty_claims_(prometheus::BuildCounter()
                        .Name("rkl_mtms_forwarder_empty_claims_total")
                        .Help("Forwarder claims that found no due package")
                        .Register(metrics.registry())
                        .Add({})) {}

void ForwarderMetrics::Wakeup() { wakeups_.Increment(); }

void ForwarderMetrics::EmptyClaim() { empty_claims_.Increment(); }

void ForwarderMetrics::ForwardAttempt(const absl::Status& result) {
  attempts_.Increment();
  if (!result.ok()) failures_.Increment();
}

void ForwarderMetrics::Translation(const absl::Status& result) {
  const std::string label =
      result.ok() ? "ok" : absl::AsciiStrToLower(absl::StatusCodeToString(result.code()));
  translations_.Add({{"result", label}}).Increment();
}

void RegisterMtmsMetrics(metrics::Metrics& metrics, MtmsRepository& repository,
                         const Clock& clock) {
  auto& outbox = prometheus::BuildGauge()
                     .Name("rkl_mtms_outbox")
                     .Help("Packages in the outbox (SN-Key_MTMS) by state")
                     .Register(metrics.registry());
  prometheus::Gauge& received = outbox.Add({{"state", "received"}});
  prometheus::Gauge& forwarded = outbox.Add({{"state", "forwarded"}});
  prometheus::Gauge& rejected = outbox.Add({{"state", "rejected"}});
  prometheus::Gauge& oldest = prometheus::BuildGauge()
                                  .Name("rkl_mtms_outbox_oldest_unforwarded_age_seconds")
                                  .Help("Age of the oldest package not yet forwarded (0: none)")
                                  .Register(metrics.registry())
                                  .Add({});
  prometheus::Gauge& expiry = prometheus::BuildGauge()
                                  .Name("rkl_mtms_work_key_expiry_days")
                                  .Help("Days until the current work certificate expires")
                                  .Register(metrics.registry())
                                  .Add({});
  // (Pointers, not references, are captured: the lambdas outlive this function.)
  MtmsRepository* repo = &repository;
  metrics.OnCollect("mtms_outbox",
                    [repo, clock, received = &received, forwarded = &forwarded,
                     rejected = &rejected, oldest = &oldest]() -> absl::Status {
                      RKL_ASSIGN_OR_RETURN(QueueCounts counts, repo->CountSubmissions());
                      received->Set(static_cast<double>(counts.received));
                      forwarded->Set(static_cast<double>(counts.forwarded));
                      rejected->Set(static_cast<double>(counts.rejected));
                      const int64_t age_ms =
                          counts.received == 0
                              ? 0
                              : std::max<int64_t>(0,
                                                  NowUnixMs(clock) - counts.oldest_received_at_ms);
                      oldest->Set(static_cast<double>(age_ms) / 1000.0);
                      return absl::OkStatus();
                    });
  // The certificate is parsed again only when the CURRENT key changed.
  struct Parsed {
    std::string serial_hex;
    int64_t not_after = 0;
  };
  auto parsed = std::make_shared<std::optional<Parsed>>();
  metrics.OnCollect("mtms_work_key", [repo, clock, parsed, expiry = &expiry]() -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::optional<WorkKeyRecord> current, repo->CurrentWorkKey());
    if (!current.has_value()) {
      expiry->Set(0);
      return absl::OkStatus();
    }
    if (!parsed->has_value() || (*parsed)->serial_hex != current->serial_hex) {
      RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                           crypto::Certificate::FromPem(current->certificate_pem));
      *parsed = Parsed{.serial_hex = current->serial_hex, .not_after = cert.NotAfter()};
    }
    const int64_t left_ms = (*parsed)->not_after * 1000 - NowUnixMs(clock);
    expiry->Set(static_cast<double>(left_ms) / (86400.0 * 1000.0));
    return absl::OkStatus();
  });
}

}  // namespace rkl::mtms
