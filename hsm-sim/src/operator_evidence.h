#pragma once
// OperatorEvidence: HSM #1's own check that an operator signed the transport key it is asked
// to translate (PROTOCOL §4, claim 4), so that no caller — MTMS's host, an administrator —
// can have a Ctk_Pu of its own making re-wrapped under PK/MAK. MTMS checks the same package
// at intake and again before forwarding; the HSM does not rely on that.
//
// Verify() returns the operator id when all of these hold, else the refusal:
//  - the evidence is complete (package, signature, certificate) — else UNAUTHENTICATED;
//  - the certificate chains to one of the configured operator-ca certificates and is valid
//    at the package's created_at (FAILED_PRECONDITION when it is not valid then,
//    UNAUTHENTICATED when it does not chain), and has the operator profile of PROTOCOL §2:
//    CN "operator:<id>", end entity, keyUsage digitalSignature, ECDSA P-256 — else
//    UNAUTHENTICATED;
//  - the ECDSA-P256-SHA256 signature verifies over the package bytes — else UNAUTHENTICATED;
//  - the package parses and its operator_id, sn, ctk_pu, algorithm and created_at are the
//    certificate's id and exactly the values to translate — else INVALID_ARGUMENT (does not
//    parse) or PERMISSION_DENIED (signed for something else).
// Revocation is not checked here (HSM #1 has no CRL; MTMS checks it at intake).
// Everything it reads is public; messages never echo the caller's bytes.
// Thread-safe. Successful chain checks are cached by certificate DER (bounded), as a few
// operator cards sign every package.

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/x509.h"

namespace rkl::hsm {

// What a translate request carries as evidence (hsm.proto TranslateTransportKeyRequest).
struct TranslateEvidence {
  Bytes package{};                   // B, the serialized TransportKeyPackage
  Bytes package_signature{};         // DER ECDSA over B
  Bytes operator_certificate_der{};  // the signer's certificate
};

// What the translation is asked to produce: it must be what the operator signed.
struct TranslateSubject {
  const std::string& sn;
  const Bytes& ctk_pu;
  crypto::KeyAlgorithm algorithm;
  int64_t created_at_ms;
};

class OperatorEvidence {
 public:
  static constexpr size_t kMaxCached = 1024;

  // No operator-ca at all: every Verify() is FAILED_PRECONDITION (an HSM that is not
  // configured to translate).
  explicit OperatorEvidence(std::vector<crypto::Certificate> operator_cas);

  absl::StatusOr<std::string> Verify(const TranslateEvidence& evidence,
                                     const TranslateSubject& subject) const;

 private:
  struct Checked {
    std::string operator_id;
    crypto::PublicKey key;
    int64_t valid_from_s;   // the certificate and its issuer are both valid from ...
    int64_t valid_until_s;  // ... until (inclusive)
  };
  // The operator id and key of a certificate that chains and has the operator profile,
  // valid at `at_s`.
  absl::StatusOr<Checked> CheckCertificate(const Bytes& der, int64_t at_s) const;

  const std::vector<crypto::Certificate> operator_cas_;
  mutable absl::Mutex mu_;
  mutable std::unordered_map<std::string, Checked> checked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rkl::hsm
