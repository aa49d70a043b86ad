#include "profiles.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rkl/common/enum_names.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/rsa.h"

namespace rkl::ca {
namespace {

constexpr size_t kMaxHsmIdLength = 32;
constexpr size_t kMaxOperatorIdLength = 48;
constexpr size_t kMaxDnsNameLength = 253;
constexpr int kMinRsaBits = 2048;
// Upper bound so a caller cannot make terminals verify with absurdly large keys.
constexpr int kMaxRsaBits = 4096;

constexpr EnumName<IssuerId> kIssuerNames[] = {{IssuerId::kTerminalRoot, "terminal-root"},
                                               {IssuerId::kOperatorCa, "operator-ca"},
                                               {IssuerId::kServiceCa, "service-ca"},
                                               {IssuerId::kKdhCa, "kdh-ca"}};
constexpr EnumName<Profile> kProfileNames[] = {{Profile::kIssuer, "issuer"},
                                               {Profile::kWork, "work"},
                                               {Profile::kOperator, "operator"},
                                               {Profile::kService, "service"},
                                               {Profile::kKdh, "kdh"}};
constexpr EnumName<KeySpec> kKeySpecNames[] = {{KeySpec::kEcP256, "ec-p256"},
                                               {KeySpec::kRsa2048, "rsa-2048"},
                                               {KeySpec::kRsa3072, "rsa-3072"}};

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

absl::Status CheckChars(std::string_view value, std::string_view field, size_t max_length,
                        std::string_view extra, std::string_view rule) {
  bool ok = !value.empty() && value.size() <= max_length;
  for (char c : value) {
    ok = ok && (IsLowerAlnum(c) || extra.find(c) != std::string_view::npos);
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(field), ": must be ", std::string(rule)));
}

absl::Status ValidateRsa(const crypto::PublicKey& key, std::string_view field) {
  int bits = key.Bits();
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": RSA key must have 2048 to 4096 bits, got ", bits));
  }
  BIGNUM* e = nullptr;
  bool e_ok = EVP_PKEY_get_bn_param(key.evp_pkey(), OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
              BN_is_word(e, RSA_F4);
  BN_free(e);
  ERR_clear_error();
  if (!e_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": RSA public exponent must be 65537"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view IssuerName(IssuerId issuer) { return NameOf(kIssuerNames, issuer); }

absl::StatusOr<IssuerId> IssuerFromName(std::string_view name) {
  if (auto id = ValueNamed(kIssuerNames, name)) return *id;
  return absl::InvalidArgumentError(
      "issuer: must be terminal-root, operator-ca, service-ca or kdh-ca");
}

std::string_view ProfileName(Profile profile) { return NameOf(kProfileNames, profile); }

absl::StatusOr<Profile> ProfileFromName(std::string_view name) {
  if (auto p = ValueNamed(kProfileNames, name)) return *p;
  return absl::InvalidArgumentError("profile: must be issuer, work, operator, service or kdh");
}

std::string_view KeySpecName(KeySpec spec) { return NameOf(kKeySpecNames, spec); }

absl::StatusOr<KeySpec> KeySpecFromName(std::string_view name) {
  if (auto s = ValueNamed(kKeySpecNames, name)) return *s;
  return absl::InvalidArgumentError("key type: must be ec-p256, rsa-2048 or rsa-3072");
}

absl::StatusOr<crypto::PrivateKey> GenerateKey(KeySpec spec) {
  switch (spec) {
    case KeySpec::kEcP256:
      return crypto::GenerateEcP256Key();
    case KeySpec::kRsa2048:
      return crypto::GenerateRsaKey(2048);
    case KeySpec::kRsa3072:
      return crypto::GenerateRsaKey(3072);
  }
  return absl::InvalidArgumentError("key type: unknown");
}

ExtensionProfile ExtensionsOf(Profile profile) {
  using crypto::ExtendedKeyUsage;
  using crypto::KeyUsage;
  switch (profile) {
    case Profile::kIssuer:
      // pathLen 0: an issuer signs leaves only, never another CA.
      return {true, 0, KeyUsage::kKeyCertSign | KeyUsage::kCrlSign, ExtendedKeyUsage::kNone};
    case Profile::kWork:
      // keyEncipherment only: Pu is for RSA-OAEP of TK and nothing else (PROTOCOL §2).
      return {false, std::nullopt, KeyUsage::kKeyEncipherment, ExtendedKeyUsage::kNone};
    case Profile::kOperator:
      return {false, std::nullopt, KeyUsage::kDigitalSignature, ExtendedKeyUsage::kNone};
    case Profile::kKdh:
      // digitalSignature only: the KDH signs TR-34 tokens (CMS SignedData) and nothing else.
      return {false, std::nullopt, KeyUsage::kDigitalSignature, ExtendedKeyUsage::kNone};
    case Profile::kService:
      // (EC)DHE TLS needs only digitalSignature from the certificate key.
      return {false, std::nullopt, KeyUsage::kDigitalSignature,
              ExtendedKeyUsage::kServerAuth | ExtendedKeyUsage::kClientAuth};
  }
  return {false, std::nullopt, KeyUsage::kNone, ExtendedKeyUsage::kNone};
}

IssuerId IssuerOf(Profile profile) {
  switch (profile) {
    case Profile::kWork:
      return IssuerId::kTerminalRoot;
    case Profile::kOperator:
      return IssuerId::kOperatorCa;
    case Profile::kKdh:
      return IssuerId::kKdhCa;
    case Profile::kService:
    case Profile::kIssuer:
      return IssuerId::kServiceCa;
  }
  return IssuerId::kServiceCa;
}

absl::Status ValidateHsmId(std::string_view hsm_id, std::string_view field) {
  return CheckChars(hsm_id, field, kMaxHsmIdLength, "-", "1-32 characters of [a-z0-9-]");
}

absl::Status ValidateOperatorId(std::string_view id, std::string_view field) {
  return CheckChars(id, field, kMaxOperatorIdLength, "._-", "1-48 characters of [a-z0-9._-]");
}

bool IsAdminName(std::string_view name) { return name.starts_with(kAdminPrefix); }
bool IsCustodianName(std::string_view name) { return name.starts_with(kCustodianPrefix); }
bool IsPersonName(std::string_view name) { return IsAdminName(name) || IsCustodianName(name); }

absl::Status ValidateServiceName(std::string_view name, std::string_view field) {
  if (IsAdminName(name)) {
    return CheckChars(name.substr(kAdminPrefix.size()), field, kMaxOperatorIdLength, "._-",
                      "admin:<name> with a name of 1-48 characters of [a-z0-9._-]");
  }
  if (IsCustodianName(name)) {
    return CheckChars(name.substr(kCustodianPrefix.size()), field, kMaxOperatorIdLength, "._-",
                      "custodian:<name> with a name of 1-48 characters of [a-z0-9._-]");
  }
  if (std::find(std::begin(kServiceNames), std::end(kServiceNames), name) !=
      std::end(kServiceNames)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(field),
                   ": must be ca, hsm-mtms, hsm-kms, mtms, kms, admin:<name> or custodian:<name>"));
}

absl::Status ValidateDnsName(std::string_view dns_name, std::string_view field) {
  absl::Status s =
      CheckChars(dns_name, field, kMaxDnsNameLength, ".-", "1-253 characters of [a-z0-9.-]");
  if (s.ok() && (dns_name.front() == '.' || dns_name.back() == '.' ||
                 dns_name.find("..") != std::string_view::npos)) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": must not have empty labels"));
  }
  return s;
}

std::string WorkCommonName(std::string_view hsm_id, uint64_t key_index) {
  return absl::StrCat("hsm-work:", std::string(hsm_id), ":", key_index);
}

std::string KdhCommonName(std::string_view hsm_id, uint64_t key_index) {
  return absl::StrCat("kdh:", std::string(hsm_id), ":", key_index);
}

std::string OperatorCommonName(std::string_view operator_id) {
  return absl::StrCat("operator:", std::string(operator_id));
}

absl::Status ValidateHsmPublicKey(const crypto::PublicKey& key) {
  if (key.Type() != crypto::KeyType::kRsa) {
    return absl::InvalidArgumentError("public_key_der: must be an RSA key");
  }
  return ValidateRsa(key, "public_key_der");
}

absl::Status ValidateOperatorPublicKey(const crypto::PublicKey& key) {
  if (key.Type() != crypto::KeyType::kEcP256) {
    return absl::InvalidArgumentError("csr_pem: operator key must be EC P-256");
  }
  return absl::OkStatus();
}

absl::Status ValidateServicePublicKey(const crypto::PublicKey& key) {
  if (key.Type() == crypto::KeyType::kEcP256) return absl::OkStatus();
  return ValidateRsa(key, "csr_pem");
}

}  // namespace rkl::ca
