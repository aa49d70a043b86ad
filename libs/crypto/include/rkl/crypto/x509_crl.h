#pragma once
// Certificate revocation lists: the Crl value type and the CrlBuilder the CA publishes with
// (PROTOCOL.md §2, "Revocation").
//
// Guarantees:
//  - a Crl always holds a parsed, DER-round-trippable v2 or v1 CRL whose times decoded; it is
//    immutable, so copies share one X509_CRL by reference count and const use from several
//    threads is safe (OpenSSL serialises its lazy sort of the revoked list internally);
//  - parsing does not check the signature: VerifySignature() or VerifyChain() does that.
// A CRL is public data and may be logged or stored freely.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_object.h"

namespace rkl::crypto {

// CRLReason (RFC 5280 §5.3.1). removeFromCRL (8) is for delta CRLs, which rkl does not use.
enum class CrlReason : int {
  kUnspecified = 0,
  kKeyCompromise = 1,
  kCaCompromise = 2,
  kAffiliationChanged = 3,
  kSuperseded = 4,
  kCessationOfOperation = 5,
  kCertificateHold = 6,
  kPrivilegeWithdrawn = 9,
  kAaCompromise = 10,
};

struct RevokedCertificate {
  Bytes serial;             // big-endian magnitude, as Certificate::SerialBytes()
  int64_t revocation_time;  // unix seconds
  CrlReason reason;         // kUnspecified when the entry has no reasonCode
};

// Parse(), ToDer() and ToPem() come from PemOrDerCodec.
class Crl : public PemOrDerCodec<Crl> {
 public:
  // Exactly one DER CRL, no trailing bytes.
  static absl::StatusOr<Crl> FromDer(std::span<const uint8_t> der);
  // Exactly one "X509 CRL" PEM block.
  static absl::StatusOr<Crl> FromPem(std::string_view pem);

  std::string IssuerDn() const;
  std::string IssuerCommonName() const;
  int64_t LastUpdate() const { return last_update_; }
  std::optional<int64_t> NextUpdate() const { return next_update_; }
  // cRLNumber; nullopt when absent or larger than 64 bits.
  std::optional<uint64_t> CrlNumber() const;

  // Whether `serial` (big-endian magnitude) is listed. Checks the list only: whether this CRL
  // is the right one for a certificate (issuer, signature, freshness) is VerifyChain's job.
  bool IsRevoked(std::span<const uint8_t> serial) const;
  // Same, for a certificate's serial; false when the certificate has another issuer name.
  bool IsRevoked(const Certificate& cert) const;
  std::vector<RevokedCertificate> Entries() const;

  // OK if `issuer`'s subject is this CRL's issuer and its key verifies the signature;
  // UNAUTHENTICATED otherwise.
  absl::Status VerifySignature(const Certificate& issuer) const;

  // Borrowed pointer for rkl::crypto internals; shared with copies, do not modify.
  X509_CRL* x509_crl() const { return crl_.get(); }

 private:
  Crl(X509CrlPtr crl, int64_t last_update, std::optional<int64_t> next_update)
      : crl_(std::move(crl)), last_update_(last_update), next_update_(next_update) {}
  static absl::StatusOr<Crl> FromX509Crl(X509CrlPtr crl);

  SharedX509CrlPtr crl_;
  int64_t last_update_ = 0;
  std::optional<int64_t> next_update_;
};

// Builds and signs a v2 CRL (SHA-256; RSA PKCS#1 v1.5 or ECDSA by issuer key type) with
// authorityKeyIdentifier and, if set, cRLNumber. Not thread-safe; one builder per CRL.
class CrlBuilder {
 public:
  // serial: big-endian, positive, at most 159 bits.
  CrlBuilder& AddRevoked(Bytes serial, int64_t revocation_time,
                         CrlReason reason = CrlReason::kUnspecified);
  // Required, unix seconds.
  CrlBuilder& SetLastUpdate(int64_t last_update);
  // Strongly recommended (RFC 5280 requires it); must be after last_update.
  CrlBuilder& SetNextUpdate(int64_t next_update);
  CrlBuilder& SetCrlNumber(uint64_t number);

  // `issuer_key` must match `issuer`'s public key.
  absl::StatusOr<Crl> Sign(const Certificate& issuer, const PrivateKey& issuer_key) const;

 private:
  std::vector<RevokedCertificate> revoked_;
  std::optional<int64_t> last_update_;
  std::optional<int64_t> next_update_;
  std::optional<uint64_t> crl_number_;
};

}  // namespace rkl::crypto
