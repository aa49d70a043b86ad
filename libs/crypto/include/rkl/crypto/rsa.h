#pragma once
// RSA for rkl: key generation (Pu/Pr, CA keys) and RSAES-OAEP for the transport key
// (PROTOCOL.md §3, §5).
//
// Guarantees:
//  - keys are generated with e = 65537 and 2048 or 3072 bits only;
//  - OAEP is always SHA-256 with MGF1-SHA-256; the label binds a ciphertext to its context
//    ("RKL-TK:" ‖ SN), so a ciphertext moved to another SN does not decrypt;
//  - the plaintext goes in and comes out as SecretBytes;
//  - every decryption failure (wrong key, wrong label, tampered or wrong-length ciphertext)
//    returns the same UNAUTHENTICATED "decryption failed" with no further detail, and the
//    OpenSSL error queue is cleared, so the caller cannot build a padding oracle from it.
// Thread safety: free functions; keys are only read.

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

// INVALID_ARGUMENT unless bits is 2048 or 3072.
absl::StatusOr<PrivateKey> GenerateRsaKey(int bits);

// The OAEP label of a transport key ciphertext: "RKL-TK:" ‖ sn (PROTOCOL.md §3).
Bytes TransportKeyOaepLabel(std::string_view sn);

// Largest plaintext RSAES-OAEP-SHA256 accepts under `key` (k - 2·32 - 2 bytes).
size_t RsaOaepMaxPlaintext(const PublicKey& key);

// RSAES-OAEP(SHA-256, MGF1-SHA-256, label). INVALID_ARGUMENT if the key is not RSA of at least
// 2048 bits, or the plaintext is empty or longer than RsaOaepMaxPlaintext().
absl::StatusOr<Bytes> RsaOaepEncrypt(const PublicKey& key, const SecretBytes& plaintext,
                                     std::span<const uint8_t> label);

// Inverse of RsaOaepEncrypt. INVALID_ARGUMENT only if `key` is not an RSA key (a property of
// the caller's configuration, not of the ciphertext); any other failure is the uniform
// UNAUTHENTICATED "decryption failed".
absl::StatusOr<SecretBytes> RsaOaepDecrypt(const PrivateKey& key,
                                           std::span<const uint8_t> ciphertext,
                                           std::span<const uint8_t> label);

}  // namespace rkl::crypto
