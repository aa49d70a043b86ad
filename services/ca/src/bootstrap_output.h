#pragma once
// The directory `rklctl pki init` writes (docs/pki.md, "Bootstrap output"):
//
//   DIR/ca-bundle.pem            service-ca: the trust anchor of every mTLS endpoint
//   DIR/terminal-root.pem        HsmRCRT: what terminals burn in
//   DIR/kdh-ca.pem               TR-34 kdh-ca: what terminals burn in to check the KDH
//   DIR/operator-ca.pem          operator-ca: what MTMS verifies operator cards against
//   DIR/<service>/cert.pem       one per service (ca, hsm-mtms, hsm-kms, mtms, kms)
//   DIR/<service>/key.pem        its private key, PKCS#8 PEM, mode 0600
//   DIR/admin-<name>/cert.pem    one per first administrator (at least two): client certificate
//   DIR/admin-<name>/key.pem     mode 0600
//   DIR/custodian-<name>/...     one per key custodian, the same two files
//   DIR/operator-<id>.p12        the first operator card, PIN-protected PKCS#12, mode 0600
//
// Guarantees: files are created exclusively (an existing file is never overwritten); private
// keys go from SecretBytes straight to files created with mode 0600.

#include <string>

#include "absl/status/status.h"
#include "ca_core.h"

namespace rkl::ca {

// The file terminals burn in to check KDH certificates (TR-34).
inline constexpr char kKdhCaFileName[] = "kdh-ca.pem";

// OK when `dir` does not exist or is an empty directory; FAILED_PRECONDITION otherwise, so
// the bootstrap can refuse before it touches the database.
absl::Status CheckBootstrapOutputDir(const std::string& dir);

// Writes the layout above (creating `dir` if needed).
absl::Status WriteBootstrapOutput(const BootstrapResult& result, const std::string& dir);

// `rklctl pki add-issuer`: writes DIR/<issuer name>.pem (kdh-ca → DIR/kdh-ca.pem), creating
// `dir` if needed; ALREADY_EXISTS if that file exists. Returns the path.
absl::StatusOr<std::string> WriteIssuerCertificate(IssuerId issuer,
                                                   const crypto::Certificate& certificate,
                                                   const std::string& dir);

// The sub-directory name of an identity: "mtms" → "mtms", "admin:alice" → "admin-alice",
// "custodian:carol" → "custodian-carol".
std::string IdentityDirName(const std::string& identity);

// Writes `data` to a new file with `mode`; ALREADY_EXISTS if the file exists.
absl::Status WriteNewFile(const std::string& path, std::span<const uint8_t> data, int mode);

}  // namespace rkl::ca
