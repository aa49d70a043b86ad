#pragma once
// OperatorTrust: MTMS's view of `operator-ca` — its certificate and its current CRL, fetched
// from the CA and cached — and the one place operator certificates are judged.
//
// Guarantees:
//  - a CRL is used only if its signature verifies under the operator-ca certificate it was
//    fetched with, and only until its nextUpdate: past that, intake is refused with
//    UNAVAILABLE until a fresh CRL arrives (never "no CRL, so nobody is revoked");
//  - before any CRL was ever fetched, every check is UNAVAILABLE;
//  - the cache refreshes when older than `refresh_interval`; a failed refresh keeps the old
//    CRL within its nextUpdate and is retried at most every `kRefreshRetry`.
// Status codes (PROTOCOL §10, docs/mtms.md): not chaining to operator-ca → UNAUTHENTICATED;
// expired or not yet valid → FAILED_PRECONDITION; revoked → FAILED_PRECONDITION;
// wrong profile (CN form, key type, key usage) → UNAUTHENTICATED.
// Thread-safe: concurrent checks share one snapshot; one refresh runs at a time.
//
// Caches (a few operator cards sign every package, so each is parsed and chain-checked once
// instead of per package; both caches are bounded and only ever hold public data):
//  - Parse: the certificate and public key parsed from a PEM text, by the exact text;
//  - the outcome of a successful chain + profile check, by certificate DER. It depends only
//    on the certificate, the operator-ca certificate and the time, so it is reused only
//    under the same operator-ca certificate and only for times inside both certificates'
//    validity. Failures are never cached, and neither is revocation: every intake asks the
//    current CRL.

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mtms_ports.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"

namespace rkl::mtms {

class OperatorTrust {
 public:
  static constexpr int64_t kRefreshRetryMs = 5000;
  static constexpr char kOperatorCnPrefix[] = "operator:";
  static constexpr size_t kMaxCached = 4096;  // per cache; emptied when full

  struct ParsedCertificate {
    crypto::Certificate certificate;
    absl::StatusOr<crypto::PublicKey> key;  // its subject public key, as GetPublicKey gave it
  };

  // `ca` and `clock` are not owned and must outlive this object.
  OperatorTrust(CaPort& ca, const Clock& clock, absl::Duration refresh_interval);

  // Fetches operator-ca and its CRL now. UNAVAILABLE when the CA cannot be reached;
  // UNAVAILABLE too when what it returned does not verify (the old cache is kept).
  absl::Status Refresh();

  // Exactly one PEM certificate, parsed (once per distinct text). INVALID_ARGUMENT when it
  // is not; parsing alone proves nothing about the certificate.
  absl::StatusOr<std::shared_ptr<const ParsedCertificate>> Parse(const std::string& pem);

  // Full intake check at the current time: chain to operator-ca, validity, profile, and
  // revocation against a current CRL. Returns the operator id from the CN.
  absl::StatusOr<std::string> VerifyForIntake(const crypto::Certificate& cert);

  // Chain and profile only, at `at_unix_s` (the forwarder's claim-4 re-check of a stored
  // package: the certificate was current and unrevoked when the package was received).
  absl::StatusOr<std::string> VerifyChainAt(const crypto::Certificate& cert, int64_t at_unix_s);

 private:
  struct Snapshot {
    crypto::Certificate issuer;
    crypto::Crl crl;
    int64_t fetched_at_ms;
  };
  // The cached snapshot, refreshed first when stale; UNAVAILABLE when there is none.
  absl::StatusOr<Snapshot> Current(bool need_crl);
  absl::StatusOr<std::string> CheckChainAndProfile(const crypto::Certificate& issuer,
                                                   const crypto::Certificate& cert,
                                                   int64_t at_unix_s);

  struct CheckedChain {
    crypto::Certificate issuer;  // the operator-ca certificate it chained to
    std::string operator_id;
    int64_t valid_from_s;   // both certificates valid from ...
    int64_t valid_until_s;  // ... until (inclusive)
  };

  CaPort& ca_;
  const Clock clock_;
  const int64_t refresh_interval_ms_;

  absl::Mutex refresh_mu_;  // one CA round trip at a time
  mutable absl::Mutex mu_;
  std::optional<Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::optional<int64_t> last_failed_refresh_ms_ ABSL_GUARDED_BY(mu_);

  absl::Mutex cache_mu_;
  std::unordered_map<std::string, std::shared_ptr<const ParsedCertificate>> parsed_
      ABSL_GUARDED_BY(cache_mu_);
  std::unordered_map<std::string, CheckedChain> checked_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace rkl::mtms
