#include "rkl/crypto/x509_crl.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "keys_internal.h"

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
  X509CrlPtr crl = internal::ParseDerExact<X509CrlPtr>(der, d2i_X509_CRL);
  if (crl == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("crl: not a DER X.509 CRL");
  }
  return FromX509Crl(std::move(crl));
}

absl::StatusOr<Crl> Crl::FromPem(std::string_view pem) {
  BioPtr bio = internal::MemBio(pem);
  X509CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  if (crl == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("crl: not a PEM X509 CRL");
  }
  // Exactly one block: a second one would silently be ignored otherwise.
  X509CrlPtr extra(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (extra != nullptr) return absl::InvalidArgumentError("crl: expected exactly one PEM CRL");
  return FromX509Crl(std::move(crl));
}

absl::StatusOr<Crl> Crl::Parse(std::span<const uint8_t> pem_or_der) {
  if (internal::LooksLikePem(pem_or_der)) return FromPem(AsString(pem_or_der));
  return FromDer(pem_or_der);
}

Crl::Crl(const Crl& other) : last_update_(other.last_update_), next_update_(other.next_update_) {
  if (other.crl_ != nullptr && X509_CRL_up_ref(other.crl_.get()) == 1) {
    crl_.reset(other.crl_.get());
  }
}

Crl& Crl::operator=(const Crl& other) {
  if (this != &other) {
    Crl copy(other);
    *this = std::move(copy);
  }
  return *this;
}

Bytes Crl::ToDer() const { return internal::ToDer(crl_.get(), i2d_X509_CRL); }

std::string Crl::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509_CRL(bio.get(), crl_.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  return internal::BioContents(bio.get());
}

std::string Crl::IssuerDn() const {
  return internal::NameToString(X509_CRL_get_issuer(crl_.get()));
}

std::string Crl::IssuerCommonName() const {
  return internal::NameCommonName(X509_CRL_get_issuer(crl_.get()));
}

std::optional<uint64_t> Crl::CrlNumber() const {
  int crit = -1;
  Asn1IntegerPtr n(
      static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl_.get(), NID_crl_number, &crit, nullptr)));
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
    int crit = -1;
    Asn1EnumeratedPtr reason(
        static_cast<ASN1_ENUMERATED*>(X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, nullptr)));
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
  if (X509_check_private_key(issuer.x509(), issuer_key.evp_pkey()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("issuer_key: does not match the issuer certificate");
  }

  X509CrlPtr crl(X509_CRL_new());
  Asn1TimePtr last(ASN1_TIME_set(nullptr, static_cast<time_t>(*last_update_)));
  if (crl == nullptr || last == nullptr || X509_CRL_set_version(crl.get(), kCrlVersion2) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(issuer.x509())) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CRL assembly failed");
  }
  if (next_update_.has_value()) {
    Asn1TimePtr next(ASN1_TIME_set(nullptr, static_cast<time_t>(*next_update_)));
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
    Asn1TimePtr when(ASN1_TIME_set(nullptr, static_cast<time_t>(r.revocation_time)));
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

  // authorityKeyIdentifier = the issuer's SKI (or its RFC 5280 method-1 hash if it has none).
  Asn1OctetStringPtr key_id;
  if (const ASN1_OCTET_STRING* id = X509_get0_subject_key_id(issuer.x509())) {
    key_id.reset(ASN1_OCTET_STRING_dup(id));
  } else {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    key_id.reset(ASN1_OCTET_STRING_new());
    if (key_id == nullptr || X509_pubkey_digest(issuer.x509(), EVP_sha1(), md, &len) != 1 ||
        ASN1_OCTET_STRING_set(key_id.get(), md, static_cast<int>(len)) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "cannot compute key identifier");
    }
  }
  AuthorityKeyIdPtr akid(AUTHORITY_KEYID_new());
  if (key_id == nullptr || akid == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
  }
  akid->keyid = key_id.release();
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
  Bytes der = internal::ToDer(crl.get(), i2d_X509_CRL);
  if (der.empty()) return OpenSslError(absl::StatusCode::kInternal, "CRL encoding failed");
  return Crl::FromDer(der);
}

}  // namespace rkl::crypto
