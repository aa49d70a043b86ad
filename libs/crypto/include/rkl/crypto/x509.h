#pragma once
// X.509 certificates for rkl's PKI (PROTOCOL.md §2): the Certificate value type and the
// CertificateBuilder the CA service and tests issue certificates with.
//
// Guarantees:
//  - a Certificate always holds a parsed, DER-round-trippable certificate whose validity
//    times and extensions decoded without error (parsing rejects anything else with
//    INVALID_ARGUMENT); it is immutable, so copies share one X509 by reference count and
//    const use from several threads is safe;
//  - a Certificate carries only public data and may be logged or stored freely;
//  - builders never see private key bytes: signing goes through a PrivateKey handle.
// Chain verification is in x509_verify.h, CRLs in x509_crl.h, CSRs in x509_csr.h.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/x509_object.h"

namespace rkl::crypto {

// keyUsage bits; bit n here is bit n of the RFC 5280 §4.2.1.3 KeyUsage BIT STRING.
enum class KeyUsage : uint32_t {
  kNone = 0,
  kDigitalSignature = 1u << 0,
  kNonRepudiation = 1u << 1,  // a.k.a. contentCommitment
  kKeyEncipherment = 1u << 2,
  kDataEncipherment = 1u << 3,
  kKeyAgreement = 1u << 4,
  kKeyCertSign = 1u << 5,
  kCrlSign = 1u << 6,
  kEncipherOnly = 1u << 7,
  kDecipherOnly = 1u << 8,
};
// extendedKeyUsage purposes rkl knows; any other OID read from a certificate shows as kOther,
// so a policy of "exactly these" can still tell that something else is present.
enum class ExtendedKeyUsage : uint32_t {
  kNone = 0,
  kServerAuth = 1u << 0,
  kClientAuth = 1u << 1,
  kCodeSigning = 1u << 2,
  kEmailProtection = 1u << 3,
  kTimeStamping = 1u << 4,
  kOcspSigning = 1u << 5,
  kOther = 1u << 31,
};

// Both usage enums are bit sets: | and & combine them, HasAll(set, wanted) is true when every
// bit of `wanted` is in `set`.
template <typename E>
concept UsageBits = std::is_same_v<E, KeyUsage> || std::is_same_v<E, ExtendedKeyUsage>;
template <UsageBits E>
constexpr E operator|(E a, E b) {
  return static_cast<E>(static_cast<uint32_t>(a) | static_cast<uint32_t>(b));
}
template <UsageBits E>
constexpr E operator&(E a, E b) {
  return static_cast<E>(static_cast<uint32_t>(a) & static_cast<uint32_t>(b));
}
template <UsageBits E>
constexpr bool HasAll(E set, E wanted) {
  return (set & wanted) == wanted;
}

// Parse(), ToDer() and ToPem() come from PemOrDerCodec.
class Certificate : public PemOrDerCodec<Certificate> {
 public:
  // Exactly one DER certificate, no trailing bytes.
  static absl::StatusOr<Certificate> FromDer(std::span<const uint8_t> der);
  // Exactly one "CERTIFICATE" PEM block (use ParsePemBundle for several).
  static absl::StatusOr<Certificate> FromPem(std::string_view pem);
  // One or more concatenated "CERTIFICATE" PEM blocks, in order.
  static absl::StatusOr<std::vector<Certificate>> ParsePemBundle(std::string_view pem);
  // Takes ownership of a parsed X509 and applies the same checks as FromDer.
  static absl::StatusOr<Certificate> FromX509(X509Ptr x509);

  // Serial number as big-endian magnitude bytes (no leading zero) and as upper-case hex of
  // those bytes ("-" prefixed in the unlikely case of a negative serial from elsewhere).
  Bytes SerialBytes() const;
  std::string SerialHex() const;

  // First CN of the subject / issuer as UTF-8; empty when there is none.
  std::string SubjectCommonName() const;
  std::string IssuerCommonName() const;
  // RFC 2253 form, most specific first, e.g. "CN=terminal-root,O=rkl".
  std::string SubjectDn() const;
  std::string IssuerDn() const;

  // Validity bounds, unix seconds.
  int64_t NotBefore() const { return not_before_; }
  int64_t NotAfter() const { return not_after_; }

  // INVALID_ARGUMENT if the key is neither RSA nor EC P-256.
  absl::StatusOr<PublicKey> GetPublicKey() const;

  // basicConstraints.
  bool HasBasicConstraints() const;
  bool BasicConstraintsCritical() const;
  bool IsCa() const;
  std::optional<int> PathLength() const;  // nullopt when absent (unlimited) or not a CA

  // keyUsage; KeyUsageBits() is kNone when the extension is absent.
  bool HasKeyUsage() const;
  bool KeyUsageCritical() const;
  KeyUsage KeyUsageBits() const;

  // extendedKeyUsage; kNone when absent.
  bool HasExtendedKeyUsage() const;
  ExtendedKeyUsage ExtendedKeyUsages() const;

  // dNSName entries of subjectAltName, in order.
  std::vector<std::string> DnsNames() const;

  // keyIdentifier of subjectKeyIdentifier / authorityKeyIdentifier; empty when absent.
  Bytes SubjectKeyId() const;
  Bytes AuthorityKeyId() const;

  // SHA-256 over the DER encoding.
  Bytes Sha256Fingerprint() const;

  // Subject == issuer and the signature verifies under the certificate's own key.
  bool IsSelfSigned() const;

  // Borrowed pointer for rkl::crypto internals. The X509 is shared with copies: do not modify.
  X509* x509() const { return x509_.get(); }

  // Same DER encoding.
  friend bool operator==(const Certificate& a, const Certificate& b);

 private:
  Certificate(X509Ptr x509, int64_t not_before, int64_t not_after)
      : x509_(std::move(x509)), not_before_(not_before), not_after_(not_after) {}
  SharedX509Ptr x509_;
  int64_t not_before_ = 0;
  int64_t not_after_ = 0;
};

// Issues a v3 certificate signed with SHA-256 (RSA PKCS#1 v1.5 for RSA issuers, ECDSA for
// EC issuers). Unless disabled, subjectKeyIdentifier (SHA-1 of the subject key, RFC 5280
// method 1) and authorityKeyIdentifier (the issuer's SKI) are added, as
// X509_V_FLAG_X509_STRICT verification requires them.
// Not thread-safe; use one builder per certificate.
// SetSubjectCommonName() and SetSubjectOrganization() come from SubjectNameBuilder.
class CertificateBuilder : public SubjectNameBuilder<CertificateBuilder> {
 public:
  // Required, big-endian unsigned, positive, at most 159 bits (RFC 5280 §4.1.2.2).
  CertificateBuilder& SetSerial(Bytes serial);
  // Required, unix seconds, 0 <= not_before < not_after.
  CertificateBuilder& SetValidity(int64_t not_before, int64_t not_after);
  // Required for Sign(); for SelfSign() it defaults to (and must equal) the signing key.
  CertificateBuilder& SetPublicKey(PublicKey key);
  // basicConstraints; path_len only for CAs. Absent unless set.
  CertificateBuilder& SetBasicConstraints(bool is_ca, std::optional<int> path_len,
                                          bool critical = true);
  // keyUsage. Absent unless set (to a non-empty set).
  CertificateBuilder& SetKeyUsage(KeyUsage usage, bool critical = true);
  // extendedKeyUsage (kOther cannot be requested). Absent unless set.
  CertificateBuilder& SetExtendedKeyUsage(ExtendedKeyUsage usages, bool critical = false);
  // subjectAltName dNSName entries (printable ASCII, no spaces, 1-253 characters).
  CertificateBuilder& AddDnsName(std::string name);
  // subjectKeyIdentifier + authorityKeyIdentifier; on by default.
  CertificateBuilder& SetKeyIdentifiers(bool enabled);

  // Signs with `issuer_key`, which must match `issuer`'s public key; the issuer name and
  // authority key identifier come from `issuer`.
  absl::StatusOr<Certificate> Sign(const Certificate& issuer, const PrivateKey& issuer_key) const;
  // Self-signed: issuer = subject, signed by `key`.
  absl::StatusOr<Certificate> SelfSign(const PrivateKey& key) const;

 private:
  struct BasicConstraints {
    bool is_ca;
    std::optional<int> path_len;
    bool critical;
  };
  absl::StatusOr<Certificate> Build(const Certificate* issuer, const PrivateKey& key) const;

  Bytes serial_;
  std::optional<int64_t> not_before_;
  std::optional<int64_t> not_after_;
  std::optional<PublicKey> public_key_;
  std::optional<BasicConstraints> basic_constraints_;
  KeyUsage key_usage_ = KeyUsage::kNone;
  bool key_usage_critical_ = true;
  ExtendedKeyUsage eku_ = ExtendedKeyUsage::kNone;
  bool eku_critical_ = false;
  std::vector<std::string> dns_names_;
  bool key_identifiers_ = true;
};

}  // namespace rkl::crypto
