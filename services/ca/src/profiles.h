#pragma once
// The certificate profiles of PROTOCOL §2, as data, and the input rules the CA enforces
// before it signs anything. Pure functions and constants; thread-safe.
//
// What the CA guarantees through these profiles:
//  - every certificate's subject is decided here from validated identifiers (hsm id, key
//    index, operator id, service name), never copied from a CSR;
//  - each issuer signs exactly one kind of leaf: terminal-root only HSM work certificates,
//    kdh-ca only TR-34 KDH certificates, operator-ca only operator certificates, service-ca
//    only service/admin certificates, so a certificate of one kind can never chain where
//    another kind is expected;
//  - extensions are exactly the profile's: basicConstraints (critical), keyUsage (critical),
//    extendedKeyUsage only on service certificates, subjectAltName only on service
//    certificates, plus subjectKeyIdentifier/authorityKeyIdentifier (required by strict
//    RFC 5280 path validation).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/x509.h"

namespace rkl::ca {

// The four issuers. Their names are the subject CNs of their certificates and the keys of
// their rows in the CA database. kdh-ca certifies the TR-34 KDH signing keys HSM #2 holds
// (docs/tr34.md); terminals burn its certificate in, as they do terminal-root's.
enum class IssuerId { kTerminalRoot, kOperatorCa, kServiceCa, kKdhCa };
inline constexpr IssuerId kAllIssuers[] = {IssuerId::kTerminalRoot, IssuerId::kOperatorCa,
                                           IssuerId::kServiceCa, IssuerId::kKdhCa};
// "terminal-root", "operator-ca", "service-ca", "kdh-ca"
std::string_view IssuerName(IssuerId issuer);
absl::StatusOr<IssuerId> IssuerFromName(std::string_view name);

// What a certificate is for; stored with every issued certificate.
enum class Profile { kIssuer, kWork, kOperator, kService, kKdh };
// "issuer", "work", "operator", "service", "kdh"
std::string_view ProfileName(Profile profile);
absl::StatusOr<Profile> ProfileFromName(std::string_view name);

// Key algorithms the CA generates (issuer keys, and the keys the bootstrap writes).
enum class KeySpec { kEcP256, kRsa2048, kRsa3072 };
std::string_view KeySpecName(KeySpec spec);  // "ec-p256", "rsa-2048", "rsa-3072"
absl::StatusOr<KeySpec> KeySpecFromName(std::string_view name);
absl::StatusOr<crypto::PrivateKey> GenerateKey(KeySpec spec);

// The extensions of one profile.
struct ExtensionProfile {
  bool is_ca;
  std::optional<int> path_len;
  crypto::KeyUsage key_usage;                   // always critical
  crypto::ExtendedKeyUsage extended_key_usage;  // kNone: extension absent
};
ExtensionProfile ExtensionsOf(Profile profile);
// The one issuer that signs leaves of `profile` (kIssuer: every issuer signs itself).
IssuerId IssuerOf(Profile profile);

// Services that may hold a service-ca certificate (PROTOCOL §2), besides admin:<name>.
inline constexpr std::string_view kServiceNames[] = {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"};
inline constexpr std::string_view kAdminPrefix = "admin:";
// Key custodians (docs/pki.md "Custody"): a role of its own, the only one HSMs accept for
// key ceremonies. Issued, like admins, only at bootstrap or under dual control.
inline constexpr std::string_view kCustodianPrefix = "custodian:";

// Identifier rules. Lengths keep every CN within X.509's 64-character limit.
// hsm_id: 1-32 of [a-z0-9-]. operator_id: 1-48 of [a-z0-9._-]. Admin name: 1-48 of
// [a-z0-9._-]. Errors are INVALID_ARGUMENT naming `field` and the rule.
absl::Status ValidateHsmId(std::string_view hsm_id, std::string_view field = "hsm_id");
absl::Status ValidateOperatorId(std::string_view id, std::string_view field = "operator_id");
// "ca", "hsm-mtms", "hsm-kms", "mtms", "kms", "admin:<name>" or "custodian:<name>".
absl::Status ValidateServiceName(std::string_view name, std::string_view field = "name");
bool IsAdminName(std::string_view name);
bool IsCustodianName(std::string_view name);
// A person's identity (admin or custodian): never a server's name, so no extra DNS SANs.
bool IsPersonName(std::string_view name);
// An extra DNS SAN for a service certificate: 1-253 characters of [a-z0-9.-] (lower case).
absl::Status ValidateDnsName(std::string_view dns_name, std::string_view field = "dns_names");

// Subject CNs.
std::string WorkCommonName(std::string_view hsm_id, uint64_t key_index);  // hsm-work:<id>:<n>
std::string KdhCommonName(std::string_view hsm_id, uint64_t key_index);   // kdh:<id>:<n>
std::string OperatorCommonName(std::string_view operator_id);             // operator:<id>

// A key an HSM holds and the CA certifies on its service's word (an HSM work key Pu, a KDH
// signing key): RSA, 2048-4096 bits, public exponent 65537.
absl::Status ValidateHsmPublicKey(const crypto::PublicKey& key);
// Operator card key: EC P-256 (PROTOCOL §1).
absl::Status ValidateOperatorPublicKey(const crypto::PublicKey& key);
// Service / admin key: EC P-256, or RSA 2048-4096 bits with e = 65537.
absl::Status ValidateServicePublicKey(const crypto::PublicKey& key);

}  // namespace rkl::ca
