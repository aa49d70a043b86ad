#include "rkl/crypto/x509_crl.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "keys_internal.h"
#include "rkl/common/status_macros.h"

namespace rkl::crypto {
namespace {

using internal::OpenSslError;

constexpr long kCrlVersion2 = 1;  // X509_CRL_VERSION_2

// Magnitude bytes → ASN1_INTEGER for lookups; null for anything no certificate can carry.
Asn1IntegerPtr LookupSerial(std::span<const uint8_t> serial) {
  auto a = internal::SerialToAsn1(serial, "serial");
  if (!a.ok()) return nullptr;
  return *std::move(a);
}

}  // namespace

// ---- Crl ------------------------------------------------------------------------------------

absl::StatusOr<Crl> Crl::FromX509Crl(X509CrlPtr crl) {
  if (crl == nullptr) return absl::InvalidArgumentError("crl: null");
  auto last = internal::Asn1TimeToUnix(X509_CRL_get0_lastUpdate(crl.get()));
  if (!last.ok()) return absl::InvalidArgumentError("crl.this_update: not a valid time");
  std::optional<int64_t> next;
  if (const ASN1_TIME* t = X509_CRL_get0_nextUpdate(crl.get())) {
    auto n = internal::Asn1TimeToUnix(t);
    if (!n.ok()) return absl::InvalidArgumentError("crl.next_update: not a valid time");
    next = *n;
  }
  return Crl(std::move(crl), *last, next);
}

absl::StatusOr<Crl> Crl::FromDer(std::span<const uint8_t> der) {
  RKL_ASSIGN_OR_RETURN(X509CrlPtr crl, internal::DecodeDer<X509CrlPtr>(der, d2i_X509_CRL,
                                                                       "crl: not a DER X.509 CRL"));
  return FromX509Crl(std::move(crl));
}

absl::StatusOr<Crl> Crl::FromPem(std::string_view pem) {
  RKL_ASSIGN_OR_RETURN(X509CrlPtr crl, internal::DecodePem<X509CrlPtr>(
                                           pem, PEM_read_bio_X509_CRL, "crl: not a PEM X509 CRL",
                                           "crl: expected exactly one PEM CRL"));
  return FromX509Crl(std::move(crl));
}

std::string Crl::IssuerDn() const {
  return internal::NameToString(X509_CRL_get_issuer(crl_.get()));
}

std::string Crl::IssuerCommonName() const {
  return internal::NameCommonName(X509_CRL_get_issuer(crl_.get()));
}

std::optional<uint64_t> Crl::CrlNumber() const {
  Asn1IntegerPtr n = internal::DecodeExtension<Asn1IntegerPtr>(crl_.get(), X509_CRL_get_ext_d2i,
                                                               NID_crl_number, nullptr);
  uint64_t value = 0;
  bool ok = n != nullptr && ASN1_INTEGER_get_uint64(&value, n.get()) == 1;
  ERR_clear_error();
  if (!ok) return std::nullopt;
  return value;
}

bool Crl::IsRevoked(std::span<const uint8_t> serial) const {
  Asn1IntegerPtr a = LookupSerial(serial);
  if (a == nullptr) return false;
  X509_REVOKED* entry = nullptr;
  // 1 = listed; 2 = listed as removeFromCRL (delta CRLs), which means "no longer revoked".
  return X509_CRL_get0_by_serial(crl_.get(), &entry, a.get()) == 1;
}

bool Crl::IsRevoked(const Certificate& cert) const {
  X509_REVOKED* entry = nullptr;
  return X509_CRL_get0_by_cert(crl_.get(), &entry, cert.x509()) == 1;
}

std::vector<RevokedCertificate> Crl::Entries() const {
  std::vector<RevokedCertificate> out;
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl_.get());
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
    const X509_REVOKED* r = sk_X509_REVOKED_value(revoked, i);
    RevokedCertificate entry;
    entry.serial = internal::Asn1IntegerToBytes(X509_REVOKED_get0_serialNumber(r));
    entry.revocation_time =
        internal::Asn1TimeToUnix(X509_REVOKED_get0_revocationDate(r)).value_or(0);
    entry.reason = CrlReason::kUnspecified;
    Asn1EnumeratedPtr reason = internal::DecodeExtension<Asn1EnumeratedPtr>(
        r, X509_REVOKED_get_ext_d2i, NID_crl_reason, nullptr);
    if (reason != nullptr) entry.reason = static_cast<CrlReason>(ASN1_ENUMERATED_get(reason.get()));
    out.push_back(std::move(entry));
  }
  ERR_clear_error();
  return out;
}

absl::Status Crl::VerifySignature(const Certificate& issuer) const {
  if (X509_NAME_cmp(X509_CRL_get_issuer(crl_.get()), X509_get_subject_name(issuer.x509())) != 0) {
    return absl::UnauthenticatedError("crl: issuer name does not match the certificate subject");
  }
  EVP_PKEY* key = X509_get0_pubkey(issuer.x509());
  int rc = key != nullptr ? X509_CRL_verify(crl_.get(), key) : -1;
  ERR_clear_error();
  if (rc != 1) return absl::UnauthenticatedError("crl: signature does not verify");
  return absl::OkStatus();
}

// ---- CrlBuilder -----------------------------------------------------------------------------

CrlBuilder& CrlBuilder::AddRevoked(Bytes serial, int64_t revocation_time, CrlReason reason) {
  revoked_.push_back(RevokedCertificate{std::move(serial), revocation_time, reason});
  return *this;
}
CrlBuilder& CrlBuilder::SetLastUpdate(int64_t last_update) {
  last_update_ = last_update;
  return *this;
}
CrlBuilder& CrlBuilder::SetNextUpdate(int64_t next_update) {
  next_update_ = next_update;
  return *this;
}
CrlBuilder& CrlBuilder::SetCrlNumber(uint64_t number) {
  crl_number_ = number;
  return *this;
}

absl::StatusOr<Crl> CrlBuilder::Sign(const Certificate& issuer,
                                     const PrivateKey& issuer_key) const {
  if (!last_update_.has_value() || *last_update_ < 0) {
    return absl::InvalidArgumentError("crl.last_update: is required and must be >= 0");
  }
  if (next_update_.has_value() && *next_update_ <= *last_update_) {
    return absl::InvalidArgumentError("crl.next_update: must be after last_update");
  }
  RKL_RETURN_IF_ERROR(internal::CheckIssuerKey(issuer.x509(), issuer_key.evp_pkey()));

  X509CrlPtr crl(X509_CRL_new());
  Asn1TimePtr last = internal::UnixToAsn1Time(*last_update_);
  if (crl == nullptr || last == nullptr || X509_CRL_set_version(crl.get(), kCrlVersion2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer.x509())) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CRL assembly failed");
  }
  if (next_update_.has_value()) {
    Asn1TimePtr next = internal::UnixToAsn1Time(*next_update_);
    if (next == nullptr || X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "CRL assembly failed");
    }
  }

  for (const RevokedCertificate& r : revoked_) {
    auto serial = internal::SerialToAsn1(r.serial, "revoked.serial");
    if (!serial.ok()) return serial.status();
    if (r.revocation_time < 0) {
      return absl::InvalidArgumentError("revoked.revocation_time: must be >= 0");
    }
    X509RevokedPtr entry(X509_REVOKED_new());
    Asn1TimePtr when = internal::UnixToAsn1Time(r.revocation_time);
    if (entry == nullptr || when == nullptr ||
        X509_REVOKED_set_serialNumber(entry.get(), serial->get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry.get(), when.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "CRL entry assembly failed");
    }
    // RFC 5280 §5.3.1: omit reasonCode rather than encode "unspecified".
    if (r.reason != CrlReason::kUnspecified) {
      Asn1EnumeratedPtr reason(ASN1_ENUMERATED_new());
      if (reason == nullptr ||
          ASN1_ENUMERATED_set(reason.get(), static_cast<long>(r.reason)) != 1 ||
          X509_REVOKED_add1_ext_i2d(entry.get(), NID_crl_reason, reason.get(), 0,
                                    X509V3_ADD_DEFAULT) != 1) {
        return OpenSslError(absl::StatusCode::kInternal, "CRL entry reason failed");
      }
    }
    if (X509_CRL_add0_revoked(crl.get(), entry.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "CRL entry assembly failed");
    }
    entry.release();  // the CRL owns it now
  }

  RKL_ASSIGN_OR_RETURN(Asn1OctetStringPtr key_id, internal::IssuerKeyIdOf(issuer.x509()));
  RKL_ASSIGN_OR_RETURN(AuthorityKeyIdPtr akid, internal::AuthorityKeyIdFor(std::move(key_id)));
  if (X509_CRL_add1_ext_i2d(crl.get(), NID_authority_key_identifier, akid.get(), 0,
                            X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CRL authorityKeyIdentifier failed");
  }
  if (crl_number_.has_value()) {
    Asn1IntegerPtr number(ASN1_INTEGER_new());
    if (number == nullptr || ASN1_INTEGER_set_uint64(number.get(), *crl_number_) != 1 ||
        X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, X509V3_ADD_DEFAULT) !=
            1) {
      return OpenSslError(absl::StatusCode::kInternal, "CRL number failed");
    }
  }

  if (X509_CRL_sort(crl.get()) != 1 ||
      X509_CRL_sign(crl.get(), issuer_key.evp_pkey(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "CRL signing failed");
  }
  return internal::Reparse<Crl>(crl.get(), i2d_X509_CRL, "CRL");
}

}  // namespace rkl::crypto
