#include "der_util.h"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "rkl/crypto/x509.h"

namespace rkl::crypto::internal {

absl::Status OpenSslError(absl::StatusCode code, std::string_view message) {
  unsigned long err = ERR_peek_last_error();
  std::string text(message);
  if (err != 0) {
    const char* reason = ERR_reason_error_string(err);
    if (reason != nullptr) absl::StrAppend(&text, " (openssl: ", reason, ")");
  }
  ERR_clear_error();
  return absl::Status(code, text);
}

BioPtr MemBio(std::span<const uint8_t> data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == nullptr) return {};
  return std::string(data, static_cast<size_t>(len));
}

bool LooksLikePem(std::span<const uint8_t> data) {
  size_t i = 0;
  while (i < data.size() && std::isspace(data[i])) ++i;
  static constexpr std::string_view kArmour = "-----BEGIN ";
  return data.size() - i >= kArmour.size() && AsString(data.subspan(i, kArmour.size())) == kArmour;
}

absl::StatusOr<int64_t> Asn1TimeToUnix(const ASN1_TIME* t) {
  // ASN1_TIME_diff against the epoch avoids timegm() and the local time zone entirely.
  Asn1TimePtr epoch(ASN1_TIME_set(nullptr, 0));
  int days = 0;
  int secs = 0;
  if (t == nullptr || epoch == nullptr || ASN1_TIME_diff(&days, &secs, epoch.get(), t) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "time: not a valid ASN.1 time");
  }
  return static_cast<int64_t>(days) * 86400 + secs;
}

absl::StatusOr<Asn1IntegerPtr> SerialToAsn1(std::span<const uint8_t> serial,
                                            std::string_view field) {
  BignumPtr bn(BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr));
  if (bn == nullptr) return OpenSslError(absl::StatusCode::kInternal, "BN_bin2bn failed");
  if (BN_is_zero(bn.get())) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": must be positive"));
  }
  // 20 content octets of a positive INTEGER hold at most 159 bits (the sign bit must be 0).
  if (BN_num_bits(bn.get()) > 159) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": must fit in 20 octets (RFC 5280 4.1.2.2)"));
  }
  Asn1IntegerPtr out(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (out == nullptr) return OpenSslError(absl::StatusCode::kInternal, "BN_to_ASN1_INTEGER failed");
  return out;
}

Bytes Asn1IntegerToBytes(const ASN1_INTEGER* a) {
  BignumPtr bn(ASN1_INTEGER_to_BN(a, nullptr));
  if (bn == nullptr) return {};
  Bytes out(static_cast<size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

absl::StatusOr<X509NamePtr> BuildName(std::string_view cn, std::string_view organization,
                                      std::string_view field) {
  if (cn.empty() || cn.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ".cn: must be 1-64 characters"));
  }
  if (organization.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ".organization: must be at most 64 characters"));
  }
  X509NamePtr name(X509_NAME_new());
  if (name == nullptr) return OpenSslError(absl::StatusCode::kInternal, "X509_NAME_new failed");
  // Least specific first, so the RFC 2253 form reads "CN=...,O=...".
  if (!organization.empty() &&
      X509_NAME_add_entry_by_NID(name.get(), NID_organizationName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(organization.data()),
                                 static_cast<int>(organization.size()), -1, 0) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(std::string(field), ".organization: not valid UTF-8"));
  }
  if (X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        absl::StrCat(std::string(field), ".cn: not valid UTF-8"));
  }
  return name;
}

std::string NameCommonName(const X509_NAME* name) {
  if (name == nullptr) return {};
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

std::string NameToString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || name == nullptr) return {};
  // RFC 2253, but keep UTF-8 readable instead of \XX-escaping every non-ASCII byte.
  if (X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
    ERR_clear_error();
    return {};
  }
  return BioContents(bio.get());
}

Bytes OctetStringBytes(const ASN1_OCTET_STRING* s) {
  if (s == nullptr) return {};
  const uint8_t* p = ASN1_STRING_get0_data(s);
  return Bytes(p, p + ASN1_STRING_length(s));
}

absl::StatusOr<X509StackPtr> X509StackOf(std::span<const Certificate> certs) {
  X509StackPtr stack(sk_X509_new_null());
  if (stack == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
  for (const Certificate& c : certs) {
    if (X509_up_ref(c.x509()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "X509_up_ref failed");
    }
    if (sk_X509_push(stack.get(), c.x509()) <= 0) {
      X509_free(c.x509());
      return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    }
  }
  return stack;
}

absl::StatusOr<Asn1OctetStringPtr> KeyIdOf(const X509* x) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  Asn1OctetStringPtr id(ASN1_OCTET_STRING_new());
  if (id == nullptr || X509_pubkey_digest(x, EVP_sha1(), md, &len) != 1 ||
      ASN1_OCTET_STRING_set(id.get(), md, static_cast<int>(len)) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "cannot compute key identifier");
  }
  return id;
}

absl::StatusOr<Asn1OctetStringPtr> IssuerKeyIdOf(X509* issuer) {
  if (const ASN1_OCTET_STRING* id = X509_get0_subject_key_id(issuer)) {
    Asn1OctetStringPtr copy(ASN1_OCTET_STRING_dup(id));
    if (copy == nullptr) return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
    return copy;
  }
  return KeyIdOf(issuer);
}

absl::StatusOr<AuthorityKeyIdPtr> AuthorityKeyIdFor(Asn1OctetStringPtr key_id) {
  AuthorityKeyIdPtr akid(AUTHORITY_KEYID_new());
  if (key_id == nullptr || akid == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "allocation failed");
  }
  akid->keyid = key_id.release();
  return akid;
}

absl::Status CheckIssuerKey(const X509* issuer, EVP_PKEY* issuer_key) {
  if (X509_check_private_key(issuer, issuer_key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("issuer_key: does not match the issuer certificate");
  }
  return absl::OkStatus();
}

}  // namespace rkl::crypto::internal
