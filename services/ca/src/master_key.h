#pragma once
// The CA master key: the one secret that protects the issuers' private keys at rest.
//
// Guarantees:
//  - the key is 32 bytes (AES-256) held only in SecretBytes; it is read from a file that must
//    not be accessible to group or others (mode 0600 or 0400), in either of two forms:
//    32 raw bytes, or 64 hex digits (optionally followed by a newline);
//  - issuer private keys are sealed by a crypto::SealingKey (seal.h: AES-256-GCM,
//    nonce ‖ ciphertext ‖ tag) over their PKCS#8 DER with
//    AAD = issuer name ‖ SHA-256(issuer certificate DER), so a sealed key moved to another
//    issuer row, or paired with another certificate, does not open;
//  - nothing here logs or returns the key or a decrypted key's bytes; the KCV (AES-CMAC,
//    PROTOCOL §1) identifies the key, and the CA database records it so that a daemon started
//    with the wrong file refuses to run;
//  - a seal that does not open is one INTERNAL message, with no detail of which check failed.
// Immutable after loading; const use from several threads is safe.

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/seal.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::ca {

class MasterKey {
 public:
  static constexpr size_t kSize = 32;

  // Reads the key file. NOT_FOUND when absent; FAILED_PRECONDITION when group or others may
  // access it, when it is not a regular file, or when its content is neither form.
  static absl::StatusOr<MasterKey> LoadFromFile(const std::string& path);
  // Writes a fresh random key as 64 hex digits to `path`, created with mode 0600; refuses
  // (ALREADY_EXISTS) to replace an existing file.
  static absl::Status CreateFile(const std::string& path);
  // A key given in memory (tests); INVALID_ARGUMENT unless it is 32 bytes.
  static absl::StatusOr<MasterKey> FromSecret(crypto::SecretBytes key);

  MasterKey(MasterKey&&) noexcept = default;
  MasterKey& operator=(MasterKey&&) noexcept = default;
  MasterKey(const MasterKey&) = delete;
  MasterKey& operator=(const MasterKey&) = delete;

  // 6 upper-case hex digits: AES-CMAC of a zero block under the key, leftmost 3 bytes.
  const std::string& KcvHex() const { return kcv_hex_; }

  // nonce ‖ ciphertext ‖ tag, to store beside `issuer_certificate`.
  absl::StatusOr<Bytes> SealIssuerKey(std::string_view issuer_name,
                                      const crypto::Certificate& issuer_certificate,
                                      const crypto::PrivateKey& key) const;
  // Inverse of SealIssuerKey; also checks that the key matches the certificate.
  absl::StatusOr<crypto::PrivateKey> OpenIssuerKey(std::string_view issuer_name,
                                                   const crypto::Certificate& issuer_certificate,
                                                   const Bytes& sealed) const;

 private:
  MasterKey(crypto::SealingKey key, std::string kcv_hex)
      : key_(std::move(key)), kcv_hex_(std::move(kcv_hex)) {}
  static Bytes IssuerKeyAad(std::string_view issuer_name, const crypto::Certificate& cert);

  crypto::SealingKey key_;
  std::string kcv_hex_;
};

}  // namespace rkl::ca
