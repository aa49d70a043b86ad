#include "ca_metrics.h"

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "rkl/common/status_macros.h"

namespace rkl::ca {
namespace {

constexpr Profile kAllProfiles[] = {Profile::kIssuer, Profile::kWork, Profile::kOperator,
                                    Profile::kService, Profile::kKdh};

}  // namespace

void RegisterCaMetrics(metrics::Metrics& metrics, CaRepository& repository, const Clock& clock) {
  auto* certificates = &prometheus::BuildGauge()
                            .Name("rkl_ca_certificates")
                            .Help("Certificates the CA signed, by profile and state")
                            .Register(metrics.registry());
  auto* crl_days = &prometheus::BuildGauge()
                        .Name("rkl_ca_crl_next_update_days")
                        .Help("Days until the nextUpdate of the issuer's current CRL")
                        .Register(metrics.registry());
  struct StateGauges {
    prometheus::Gauge* valid;
    prometheus::Gauge* revoked;
    prometheus::Gauge* expired;
  };
  auto by_profile = std::make_shared<std::map<Profile, StateGauges>>();
  for (Profile profile : kAllProfiles) {
    const std::string name(ProfileName(profile));
    by_profile->emplace(
        profile,
        StateGauges{.valid = &certificates->Add({{"profile", name}, {"state", "valid"}}),
                    .revoked = &certificates->Add({{"profile", name}, {"state", "revoked"}}),
                    .expired = &certificates->Add({{"profile", name}, {"state", "expired"}})});
  }
  CaRepository* repo = &repository;
  metrics.OnCollect("ca_certificates", [repo, clock, by_profile]() -> absl::Status {
    RKL_ASSIGN_OR_RETURN(std::vector<CertificateCounts> counts,
                         repo->CountCertificates(NowUnixSeconds(clock)));
    for (auto& [profile, gauges] : *by_profile) {
      gauges.valid->Set(0);
      gauges.revoked->Set(0);
      gauges.expired->Set(0);
    }
    for (const CertificateCounts& c : counts) {
      auto it = by_profile->find(c.profile);
      if (it == by_profile->end()) continue;
      it->second.valid->Set(static_cast<double>(c.valid));
      it->second.revoked->Set(static_cast<double>(c.revoked));
      it->second.expired->Set(static_cast<double>(c.expired));
    }
    return absl::OkStatus();
  });
  // An issuer's series exists while the issuer has a CRL (kdh-ca may be added later).
  auto issuer_gauges = std::make_shared<std::map<IssuerId, prometheus::Gauge*>>();
  metrics.OnCollect("ca_crls", [repo, clock, crl_days, issuer_gauges]() -> absl::Status {
    RKL_ASSIGN_OR_RETURN(auto next_updates, repo->CrlNextUpdates());
    const int64_t now_ms = NowUnixMs(clock);
    std::map<IssuerId, prometheus::Gauge*> present;
    for (const auto& [issuer, next_update] : next_updates) {
      auto it = issuer_gauges->find(issuer);
      prometheus::Gauge* gauge =
          it != issuer_gauges->end()
              ? it->second
              : &crl_days->Add({{"issuer", std::string(IssuerName(issuer))}});
      gauge->Set(static_cast<double>(next_update * 1000 - now_ms) / (86400.0 * 1000.0));
      present.emplace(issuer, gauge);
    }
    for (const auto& [issuer, gauge] : *issuer_gauges) {
      if (!present.contains(issuer)) crl_days->Remove(gauge);
    }
    *issuer_gauges = std::move(present);
    return absl::OkStatus();
  });
}

}  // namespace rkl::ca
