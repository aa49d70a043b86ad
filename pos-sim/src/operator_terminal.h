#pragma once
// The operator terminal of the patent with its operator card (S204, S104–S105, S301–S303):
// it fetches HsmWCRT from MTMS for the terminal, and signs each terminal's transport-key
// package with the operator card before sending it to MTMS.
//
// Guarantees:
//  - the operator card (PKCS#12, PIN-protected) is opened once; its private key stays in a
//    crypto::PrivateKey handle and its PIN is only ever held as SecretBytes;
//  - packages follow PROTOCOL §4 exactly: sn, ctk_pu, work certificate serial, algorithm,
//    created_at (unix ms, from the injected clock), 16 fresh random nonce bytes and the
//    operator id taken from the card's certificate CN "operator:<id>";
//  - the signature is ECDSA-P256-SHA256 (DER) over the serialized bytes that are sent,
//    so MTMS can store and re-verify them byte-exact.
// Thread-safe: Submit and FetchWorkCertificate may be called from many fleet workers.

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ports.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "terminal.h"

namespace rkl::pos {

inline constexpr size_t kPackageNonceSize = 16;
inline constexpr std::string_view kOperatorCnPrefix = "operator:";

class OperatorCard {
 public:
  // Opens a PKCS#12 operator card. UNAUTHENTICATED on a wrong PIN (or a corrupted file);
  // INVALID_ARGUMENT if the card's key is not EC P-256 or its certificate CN is not
  // "operator:<id>".
  static absl::StatusOr<OperatorCard> Open(const Bytes& pkcs12, const crypto::SecretBytes& pin);

  OperatorCard(OperatorCard&&) noexcept = default;
  OperatorCard& operator=(OperatorCard&&) noexcept = default;

  const std::string& operator_id() const { return operator_id_; }
  const crypto::Certificate& certificate() const { return certificate_; }
  std::string certificate_pem() const { return certificate_.ToPem(); }
  absl::StatusOr<Bytes> Sign(const Bytes& message) const;

 private:
  OperatorCard(crypto::PrivateKey key, crypto::Certificate certificate, std::string operator_id)
      : key_(std::move(key)),
        certificate_(std::move(certificate)),
        operator_id_(std::move(operator_id)) {}
  crypto::PrivateKey key_;
  crypto::Certificate certificate_;
  std::string operator_id_;
};

struct SignedPackage {
  Bytes package;  // serialized rkl.v1.TransportKeyPackage
  Bytes signature;
};

// Builds and signs the package for `offer`. Exposed for tests.
absl::StatusOr<SignedPackage> BuildSignedPackage(const TransportKeyOffer& offer,
                                                 const OperatorCard& card, int64_t now_unix_ms,
                                                 const crypto::RandomSource& random);

class OperatorTerminal {
 public:
  // `mtms` and `card` must outlive this object.
  OperatorTerminal(MtmsPort& mtms, const OperatorCard* card, Clock clock,
                   crypto::RandomSource random = crypto::FillRandom)
      : mtms_(mtms), card_(card), clock_(std::move(clock)), random_(std::move(random)) {}

  // S204: the current HsmWCRT.
  absl::StatusOr<WorkCertificateBundle> FetchWorkCertificate();
  // S104–S105: signs and submits; FAILED_PRECONDITION if no operator card was given.
  absl::StatusOr<SubmissionReceipt> Submit(const TransportKeyOffer& offer);
  // Reads back one of this card's submissions (MTMS GetOwnSubmission): a SubmissionQuery
  // signed over "RKL-SUBMISSION-QUERY:" ‖ query. FAILED_PRECONDITION without a card.
  absl::StatusOr<SubmissionView> QuerySubmission(const std::string& submission_id);

 private:
  MtmsPort& mtms_;
  const OperatorCard* card_;
  Clock clock_;
  crypto::RandomSource random_;
};

}  // namespace rkl::pos
