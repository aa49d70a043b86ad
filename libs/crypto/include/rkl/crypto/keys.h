#pragma once
// Asymmetric key handles over OpenSSL EVP_PKEY.
//
// Guarantees:
//  - PrivateKey owns its EVP_PKEY, is move-only, has no stream operator, and formatting it
//    with fmt/spdlog does not compile. Its key material leaves it only through
//    ExportPkcs8DerSecret(), which returns SecretBytes, so every export is visible with
//    `grep -rn Pkcs8DerSecret`. Clear key bytes come in only as PKCS#8 DER held in
//    SecretBytes (FromEvpPkey wraps keys OpenSSL already holds: generation, PKCS#12 read).
//  - PublicKey is a cheap copyable value (copies share one immutable EVP_PKEY by reference
//    count) and can be exported freely as SubjectPublicKeyInfo DER or PEM.
//  - Only RSA keys (any size; callers check the size they require) and EC keys on P-256 are
//    accepted; anything else is INVALID_ARGUMENT at import.
// Thread safety: both types are immutable after construction; const use from several threads
// is safe (OpenSSL 3 EVP_PKEY operations on a shared key are thread-safe).

#include <fmt/format.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

enum class KeyType {
  kRsa,
  kEcP256,
};

// "RSA" or "EC-P256", for messages.
std::string_view KeyTypeName(KeyType type);

class PublicKey {
 public:
  // SubjectPublicKeyInfo DER. The whole input must be one SPKI (no trailing bytes).
  static absl::StatusOr<PublicKey> FromDer(std::span<const uint8_t> der);
  // "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo) PEM.
  static absl::StatusOr<PublicKey> FromPem(std::string_view pem);
  // Takes a reference-counted EVP_PKEY (public part is used); INVALID_ARGUMENT for an
  // unsupported key type. For rkl::crypto internals and for interop with OpenSSL code.
  static absl::StatusOr<PublicKey> FromEvpPkey(EvpPkeyPtr pkey);

  // Copies share the EVP_PKEY (SharedEvpPkeyPtr).
  KeyType Type() const { return type_; }
  // Modulus size for RSA, 256 for P-256.
  int Bits() const;

  Bytes ToDer() const;
  std::string ToPem() const;

  // Borrowed pointer for rkl::crypto internals; never null for a constructed key.
  EVP_PKEY* evp_pkey() const { return pkey_.get(); }

  // Same key (EVP_PKEY_eq on the public components).
  friend bool operator==(const PublicKey& a, const PublicKey& b);

 private:
  friend class PrivateKey;
  friend class Certificate;
  PublicKey(EvpPkeyPtr pkey, KeyType type) : pkey_(std::move(pkey)), type_(type) {}
  // For a key that holds no private part by construction (a certificate's subject key):
  // shares it instead of copying it through SPKI DER. A copy would run an OpenSSL 3 encoder
  // and a decoder lookup (a walk of the provider registry under a process-wide lock) each
  // time a certificate's key is taken, which callers do once per signature they verify.
  static absl::StatusOr<PublicKey> FromPublicOnlyEvpPkey(EvpPkeyPtr pkey);
  SharedEvpPkeyPtr pkey_;
  KeyType type_;
};

class PrivateKey {
 public:
  // PKCS#8 PrivateKeyInfo DER (unencrypted), as produced by ExportPkcs8DerSecret().
  static absl::StatusOr<PrivateKey> FromPkcs8DerSecret(const SecretBytes& pkcs8_der);
  // Unencrypted PEM ("PRIVATE KEY", or the traditional RSA/EC forms), as TLS key files hold.
  static absl::StatusOr<PrivateKey> FromPemSecret(const SecretBytes& pem);
  // Takes ownership of an EVP_PKEY that holds a private key; INVALID_ARGUMENT for an
  // unsupported key type. For rkl::crypto internals (generation, PKCS#12 import).
  static absl::StatusOr<PrivateKey> FromEvpPkey(EvpPkeyPtr pkey);

  // Move-only: it owns its EVP_PKEY (EvpPkeyPtr), and a private key is never copied.
  KeyType Type() const { return type_; }
  int Bits() const;
  PublicKey GetPublicKey() const;

  // The deliberate export: the clear private key as PKCS#8 DER. Only the HSM's key-at-rest
  // wrapping and the terminal's secure-module storage should ever call this.
  absl::StatusOr<SecretBytes> ExportPkcs8DerSecret() const;
  // The same as unencrypted PEM ("PRIVATE KEY"), for TLS key files written by the PKI
  // bootstrap (mode 0600). Encoded through a secure-memory BIO that is cleansed on free.
  absl::StatusOr<SecretBytes> ExportPkcs8PemSecret() const;

  // Borrowed pointer for rkl::crypto internals; never null for a constructed key.
  EVP_PKEY* evp_pkey() const { return pkey_.get(); }

 private:
  PrivateKey(EvpPkeyPtr pkey, KeyType type) : pkey_(std::move(pkey)), type_(type) {}
  EvpPkeyPtr pkey_;
  KeyType type_;
};

}  // namespace rkl::crypto

// Formatting a PrivateKey (fmt::format, spdlog::info, ...) is a compile-time error, as for
// SecretBytes: a key handle has nothing loggable, and nothing should try.
template <>
struct fmt::formatter<rkl::crypto::PrivateKey> {
  template <typename ParseContext>
  constexpr auto parse(ParseContext& ctx) {
    static_assert(sizeof(ParseContext) == 0, "PrivateKey must never be formatted or logged");
    return ctx.begin();
  }
  template <typename FormatContext>
  auto format(const rkl::crypto::PrivateKey&, FormatContext& ctx) const {
    return ctx.out();
  }
};
