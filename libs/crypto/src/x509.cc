#include "rkl/crypto/x509.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
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

// The certificate's extension `nid` (see internal::DecodeExtension). Duplicated extensions
// read as absent here, but such certificates are already rejected at parse time
// (EXFLAG_INVALID).
template <typename Ptr>
Ptr GetExtension(const X509* x, int nid, int* critical) {
  return internal::DecodeExtension<Ptr>(x, X509_get_ext_d2i, nid, critical);
}

// True when the extension `nid` is present and marked critical.
template <typename Ptr>
bool IsCritical(const X509* x, int nid) {
  int crit = -1;
  GetExtension<Ptr>(x, nid, &crit);
  return crit == 1;
}

// True when OpenSSL's decoded extension flags hold `flag` (EXFLAG_BCONS, ...).
bool HasExtension(X509* x, uint32_t flag) { return (X509_get_extension_flags(x) & flag) != 0; }

bool IsValidDnsName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (char c : name) {
    // IA5String, printable, no spaces: DNS names plus rkl's "admin:<name>" identities.
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

absl::Status AddExtension(X509* x, int nid, void* value, bool critical, std::string_view what) {
  if (X509_add1_ext_i2d(x, nid, value, critical ? 1 : 0, X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("cannot add extension ", std::string(what)));
  }
  return absl::OkStatus();
}

struct EkuName {
  ExtendedKeyUsage bit;
  int nid;
};
constexpr EkuName kEkuNames[] = {
    {ExtendedKeyUsage::kServerAuth, NID_server_auth},
    {ExtendedKeyUsage::kClientAuth, NID_client_auth},
    {ExtendedKeyUsage::kCodeSigning, NID_code_sign},
    {ExtendedKeyUsage::kEmailProtection, NID_email_protect},
    {ExtendedKeyUsage::kTimeStamping, NID_time_stamp},
    {ExtendedKeyUsage::kOcspSigning, NID_OCSP_sign},
};
constexpr int kKeyUsageBitCount = 9;

}  // namespace

// ---- Certificate ----------------------------------------------------------------------------

absl::StatusOr<Certificate> Certificate::FromX509(X509Ptr x509) {
  if (x509 == nullptr) return absl::InvalidArgumentError("certificate: null");
  // Decodes and caches every extension; a malformed or duplicated one sets EXFLAG_INVALID.
  uint32_t flags = X509_get_extension_flags(x509.get());
  if ((flags & EXFLAG_INVALID) != 0) {
    ERR_clear_error();
    return absl::InvalidArgumentError("certificate: malformed or duplicated extension");
  }
  auto not_before = internal::Asn1TimeToUnix(X509_get0_notBefore(x509.get()));
  auto not_after = internal::Asn1TimeToUnix(X509_get0_notAfter(x509.get()));
  if (!not_before.ok() || !not_after.ok()) {
    return absl::InvalidArgumentError("certificate: validity is not a valid time");
  }
  return Certificate(std::move(x509), *not_before, *not_after);
}

absl::StatusOr<Certificate> Certificate::FromDer(std::span<const uint8_t> der) {
  RKL_ASSIGN_OR_RETURN(X509Ptr x, internal::DecodeDer<X509Ptr>(
                                      der, d2i_X509, "certificate: not a DER X.509 certificate"));
  return FromX509(std::move(x));
}

absl::StatusOr<std::vector<Certificate>> Certificate::ParsePemBundle(std::string_view pem) {
  BioPtr bio = internal::MemBio(pem);
  std::vector<Certificate> out;
  while (true) {
    X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (x == nullptr) break;
    auto cert = FromX509(std::move(x));
    if (!cert.ok()) return cert.status();
    out.push_back(*std::move(cert));
  }
  // The loop ends at the first read that fails; only "no more PEM blocks" is a clean end.
  unsigned long err = ERR_peek_last_error();
  bool clean_end =
      err == 0 || (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE);
  ERR_clear_error();
  if (!clean_end || out.empty()) {
    return absl::InvalidArgumentError("certificate: not a PEM CERTIFICATE");
  }
  return out;
}

absl::StatusOr<Certificate> Certificate::FromPem(std::string_view pem) {
  auto certs = ParsePemBundle(pem);
  if (!certs.ok()) return certs.status();
  if (certs->size() != 1) {
    return absl::InvalidArgumentError("certificate: expected exactly one PEM CERTIFICATE");
  }
  return std::move(certs->front());
}

Bytes Certificate::SerialBytes() const {
  return internal::Asn1IntegerToBytes(X509_get0_serialNumber(x509_.get()));
}

std::string Certificate::SerialHex() const {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(x509_.get());
  std::string hex = ToHex(SerialBytes());
  if (hex.empty()) return "00";
  return ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER ? "-" + hex : hex;
}

std::string Certificate::SubjectCommonName() const {
  return internal::NameCommonName(X509_get_subject_name(x509_.get()));
}
std::string Certificate::IssuerCommonName() const {
  return internal::NameCommonName(X509_get_issuer_name(x509_.get()));
}
std::string Certificate::SubjectDn() const {
  return internal::NameToString(X509_get_subject_name(x509_.get()));
}
std::string Certificate::IssuerDn() const {
  return internal::NameToString(X509_get_issuer_name(x509_.get()));
}

absl::StatusOr<PublicKey> Certificate::GetPublicKey() const {
  // A counted reference to the key decoded from SubjectPublicKeyInfo: public only.
  EvpPkeyPtr pkey(X509_get_pubkey(x509_.get()));
  if (pkey == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "certificate.public_key: cannot be decoded");
  }
  return PublicKey::FromPublicOnlyEvpPkey(std::move(pkey));
}

bool Certificate::HasBasicConstraints() const { return HasExtension(x509_.get(), EXFLAG_BCONS); }

bool Certificate::BasicConstraintsCritical() const {
  return IsCritical<BasicConstraintsPtr>(x509_.get(), NID_basic_constraints);
}

bool Certificate::IsCa() const {
  uint32_t flags = X509_get_extension_flags(x509_.get());
  return (flags & EXFLAG_BCONS) != 0 && (flags & EXFLAG_CA) != 0;
}

std::optional<int> Certificate::PathLength() const {
  if (!IsCa()) return std::nullopt;
  long len = X509_get_pathlen(x509_.get());
  if (len < 0) return std::nullopt;
  return static_cast<int>(len);
}

bool Certificate::HasKeyUsage() const { return HasExtension(x509_.get(), EXFLAG_KUSAGE); }

bool Certificate::KeyUsageCritical() const {
  return IsCritical<Asn1BitStringPtr>(x509_.get(), NID_key_usage);
}

KeyUsage Certificate::KeyUsageBits() const {
  Asn1BitStringPtr bits = GetExtension<Asn1BitStringPtr>(x509_.get(), NID_key_usage, nullptr);
  if (bits == nullptr) return KeyUsage::kNone;
  uint32_t out = 0;
  for (int i = 0; i < kKeyUsageBitCount; ++i) {
    if (ASN1_BIT_STRING_get_bit(bits.get(), i) == 1) out |= 1u << i;
  }
  return static_cast<KeyUsage>(out);
}

bool Certificate::HasExtendedKeyUsage() const { return HasExtension(x509_.get(), EXFLAG_XKUSAGE); }

ExtendedKeyUsage Certificate::ExtendedKeyUsages() const {
  ExtendedKeyUsagePtr eku =
      GetExtension<ExtendedKeyUsagePtr>(x509_.get(), NID_ext_key_usage, nullptr);
  if (eku == nullptr) return ExtendedKeyUsage::kNone;
  ExtendedKeyUsage out = ExtendedKeyUsage::kNone;
  for (int i = 0; i < sk_ASN1_OBJECT_num(eku.get()); ++i) {
    int nid = OBJ_obj2nid(sk_ASN1_OBJECT_value(eku.get(), i));
    ExtendedKeyUsage bit = ExtendedKeyUsage::kOther;
    for (const EkuName& known : kEkuNames) {
      if (known.nid == nid) bit = known.bit;
    }
    out = out | bit;
  }
  return out;
}

std::vector<std::string> Certificate::DnsNames() const {
  std::vector<std::string> out;
  GeneralNamesPtr names = GetExtension<GeneralNamesPtr>(x509_.get(), NID_subject_alt_name, nullptr);
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    int type = 0;
    const auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(gn, &type));
    if (type != GEN_DNS || value == nullptr) continue;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<size_t>(ASN1_STRING_length(value)));
  }
  return out;
}

Bytes Certificate::SubjectKeyId() const {
  return internal::OctetStringBytes(X509_get0_subject_key_id(x509_.get()));
}

Bytes Certificate::AuthorityKeyId() const {
  return internal::OctetStringBytes(X509_get0_authority_key_id(x509_.get()));
}

Bytes Certificate::Sha256Fingerprint() const {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(x509_.get(), EVP_sha256(), md, &len) != 1) {
    ERR_clear_error();
    return {};
  }
  return Bytes(md, md + len);
}

bool Certificate::IsSelfSigned() const {
  bool self = X509_self_signed(x509_.get(), /*verify_signature=*/1) == 1;
  ERR_clear_error();
  return self;
}

bool operator==(const Certificate& a, const Certificate& b) {
  if (a.x509_ == nullptr || b.x509_ == nullptr) return a.x509_ == b.x509_;
  return X509_cmp(a.x509_.get(), b.x509_.get()) == 0;
}

// ---- CertificateBuilder ---------------------------------------------------------------------

CertificateBuilder& CertificateBuilder::SetSerial(Bytes serial) {
  serial_ = std::move(serial);
  return *this;
}
CertificateBuilder& CertificateBuilder::SetValidity(int64_t not_before, int64_t not_after) {
  not_before_ = not_before;
  not_after_ = not_after;
  return *this;
}
CertificateBuilder& CertificateBuilder::SetPublicKey(PublicKey key) {
  public_key_ = std::move(key);
  return *this;
}
CertificateBuilder& CertificateBuilder::SetBasicConstraints(bool is_ca, std::optional<int> path_len,
                                                            bool critical) {
  basic_constraints_ = BasicConstraints{is_ca, path_len, critical};
  return *this;
}
CertificateBuilder& CertificateBuilder::SetKeyUsage(KeyUsage usage, bool critical) {
  key_usage_ = usage;
  key_usage_critical_ = critical;
  return *this;
}
CertificateBuilder& CertificateBuilder::SetExtendedKeyUsage(ExtendedKeyUsage usages,
                                                            bool critical) {
  eku_ = usages;
  eku_critical_ = critical;
  return *this;
}
CertificateBuilder& CertificateBuilder::AddDnsName(std::string name) {
  dns_names_.push_back(std::move(name));
  return *this;
}
CertificateBuilder& CertificateBuilder::SetKeyIdentifiers(bool enabled) {
  key_identifiers_ = enabled;
  return *this;
}

absl::StatusOr<Certificate> CertificateBuilder::Sign(const Certificate& issuer,
                                                     const PrivateKey& issuer_key) const {
  RKL_RETURN_IF_ERROR(internal::CheckIssuerKey(issuer.x509(), issuer_key.evp_pkey()));
  return Build(&issuer, issuer_key);
}

absl::StatusOr<Certificate> CertificateBuilder::SelfSign(const PrivateKey& key) const {
  return Build(nullptr, key);
}

absl::StatusOr<Certificate> CertificateBuilder::Build(const Certificate* issuer,
                                                      const PrivateKey& key) const {
  // ---- validate everything before touching OpenSSL, so errors name the field ----
  auto subject = internal::BuildName(cn_, organization_, "subject");
  if (!subject.ok()) return subject.status();
  if (serial_.empty()) return absl::InvalidArgumentError("serial: is required");
  auto serial = internal::SerialToAsn1(serial_, "serial");
  if (!serial.ok()) return serial.status();
  if (!not_before_.has_value() || !not_after_.has_value()) {
    return absl::InvalidArgumentError("validity: is required");
  }
  if (*not_before_ < 0 || *not_before_ >= *not_after_) {
    return absl::InvalidArgumentError("validity: must satisfy 0 <= not_before < not_after");
  }
  PublicKey subject_key = key.GetPublicKey();
  if (issuer != nullptr) {
    if (!public_key_.has_value()) return absl::InvalidArgumentError("public_key: is required");
    subject_key = *public_key_;
  } else if (public_key_.has_value() && !(*public_key_ == subject_key)) {
    return absl::InvalidArgumentError(
        "public_key: a self-signed certificate must carry the signing key");
  }
  if (basic_constraints_.has_value()) {
    const auto& bc = *basic_constraints_;
    if (bc.path_len.has_value() && (!bc.is_ca || *bc.path_len < 0)) {
      return absl::InvalidArgumentError(
          "basic_constraints.path_len: only for CA certificates, and >= 0");
    }
  }
  if ((eku_ & ExtendedKeyUsage::kOther) != ExtendedKeyUsage::kNone) {
    return absl::InvalidArgumentError("extended_key_usage: kOther cannot be issued");
  }
  for (const std::string& name : dns_names_) {
    if (!IsValidDnsName(name)) {
      return absl::InvalidArgumentError(
          "dns_name: must be 1-253 printable ASCII characters without spaces");
    }
  }

  // ---- assemble ----
  X509Ptr x(X509_new());
  if (x == nullptr || X509_set_version(x.get(), X509_VERSION_3) != 1 ||
      X509_set_serialNumber(x.get(), serial->get()) != 1 ||
      X509_set_subject_name(x.get(), subject->get()) != 1 ||
      X509_set_issuer_name(x.get(), issuer != nullptr ? X509_get_subject_name(issuer->x509())
                                                      : subject->get()) != 1 ||
      ASN1_TIME_set(X509_getm_notBefore(x.get()), static_cast<time_t>(*not_before_)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(x.get()), static_cast<time_t>(*not_after_)) == nullptr ||
      X509_set_pubkey(x.get(), subject_key.evp_pkey()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate assembly failed");
  }

  if (basic_constraints_.has_value()) {
    BasicConstraintsPtr bc(BASIC_CONSTRAINTS_new());
    if (bc == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    bc->ca = basic_constraints_->is_ca ? 0xFF : 0;
    if (basic_constraints_->path_len.has_value()) {
      bc->pathlen = ASN1_INTEGER_new();
      if (bc->pathlen == nullptr ||
          ASN1_INTEGER_set(bc->pathlen, *basic_constraints_->path_len) != 1) {
        return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
      }
    }
    absl::Status s = AddExtension(x.get(), NID_basic_constraints, bc.get(),
                                  basic_constraints_->critical, "basicConstraints");
    if (!s.ok()) return s;
  }

  if (key_usage_ != KeyUsage::kNone) {
    Asn1BitStringPtr bits(ASN1_BIT_STRING_new());
    if (bits == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    for (int i = 0; i < kKeyUsageBitCount; ++i) {
      if ((static_cast<uint32_t>(key_usage_) & (1u << i)) != 0 &&
          ASN1_BIT_STRING_set_bit(bits.get(), i, 1) != 1) {
        return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
      }
    }
    absl::Status s =
        AddExtension(x.get(), NID_key_usage, bits.get(), key_usage_critical_, "keyUsage");
    if (!s.ok()) return s;
  }

  if (eku_ != ExtendedKeyUsage::kNone) {
    ExtendedKeyUsagePtr eku(sk_ASN1_OBJECT_new_null());
    if (eku == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    for (const EkuName& known : kEkuNames) {
      if ((eku_ & known.bit) == ExtendedKeyUsage::kNone) continue;
      // OBJ_nid2obj returns a static object; freeing it with the stack is a no-op.
      if (sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(known.nid)) <= 0) {
        return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
      }
    }
    absl::Status s =
        AddExtension(x.get(), NID_ext_key_usage, eku.get(), eku_critical_, "extendedKeyUsage");
    if (!s.ok()) return s;
  }

  if (!dns_names_.empty()) {
    GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
    if (names == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    for (const std::string& name : dns_names_) {
      GeneralNamePtr gn(GENERAL_NAME_new());
      ASN1_IA5STRING* ia5 = ASN1_IA5STRING_new();
      if (gn == nullptr || ia5 == nullptr ||
          ASN1_STRING_set(ia5, name.data(), static_cast<int>(name.size())) != 1) {
        ASN1_IA5STRING_free(ia5);
        return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
      }
      GENERAL_NAME_set0_value(gn.get(), GEN_DNS, ia5);  // gn owns ia5 now
      if (sk_GENERAL_NAME_push(names.get(), gn.get()) <= 0) {
        return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
      }
      gn.release();  // the stack owns it now
    }
    // Non-critical: the subject always has a CN (RFC 5280 §4.2.1.6).
    absl::Status s =
        AddExtension(x.get(), NID_subject_alt_name, names.get(), false, "subjectAltName");
    if (!s.ok()) return s;
  }

  if (key_identifiers_) {
    RKL_ASSIGN_OR_RETURN(Asn1OctetStringPtr skid, internal::KeyIdOf(x.get()));
    RKL_RETURN_IF_ERROR(AddExtension(x.get(), NID_subject_key_identifier, skid.get(), false,
                                     "subjectKeyIdentifier"));
    // A self-signed certificate is its own issuer: its AKI is the SKI just made.
    Asn1OctetStringPtr issuer_id;
    if (issuer == nullptr) {
      issuer_id.reset(ASN1_OCTET_STRING_dup(skid.get()));
    } else {
      RKL_ASSIGN_OR_RETURN(issuer_id, internal::IssuerKeyIdOf(issuer->x509()));
    }
    RKL_ASSIGN_OR_RETURN(AuthorityKeyIdPtr akid, internal::AuthorityKeyIdFor(std::move(issuer_id)));
    RKL_RETURN_IF_ERROR(AddExtension(x.get(), NID_authority_key_identifier, akid.get(), false,
                                     "authorityKeyIdentifier"));
  }

  if (X509_sign(x.get(), key.evp_pkey(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate signing failed");
  }
  return internal::Reparse<Certificate>(x.get(), i2d_X509, "certificate");
}

}  // namespace rkl::crypto
