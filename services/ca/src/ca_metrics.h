#pragma once
// rkl-ca's own metrics (docs/pki.md "Metrics"; names fixed by docs/operations.md), read from
// the CA database at each scrape, one statement each:
//   rkl_ca_certificates{profile,state}  certificates the CA signed: profile "issuer", "work",
//                                       "operator", "service", "kdh"; state "valid",
//                                       "revoked", "expired" by the injected clock (every
//                                       profile × state, zeros included)
//   rkl_ca_crl_next_update_days{issuer} days from the injected clock to the nextUpdate of
//                                       the issuer's current CRL (negative once passed);
//                                       issuer "terminal-root", "operator-ca", "service-ca",
//                                       "kdh-ca" — only issuers the CA has
// No label carries a serial, a subject or key material.

#include "ca_repository.h"
#include "rkl/common/clock.h"
#include "rkl/metrics/metrics.h"

namespace rkl::ca {

// `repository` must outlive `metrics`' last collection.
void RegisterCaMetrics(metrics::Metrics& metrics, CaRepository& repository, const Clock& clock);

}  // namespace rkl::ca
