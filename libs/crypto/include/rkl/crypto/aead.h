#pragma once
// AES-256-GCM sealing of secret records (PROTOCOL §9: HSM key records under the LMK). seal.h's
// SealingKey is the same format behind a KEK checked once.
//
// Sealed blob format (all of it public, stored as one column):
//     nonce (12 bytes, random per seal) ‖ ciphertext (same length as the plaintext) ‖ tag (16)
// The AAD is not stored: the caller rebuilds it from the record's metadata (index, type,
// algorithm, usage, SN, creation time), so a record moved or relabelled fails to open.
//
// Guarantees: the key must be 32 bytes; the plaintext and the opened result are SecretBytes;
// any failure to authenticate (wrong key, altered nonce/ciphertext/tag/AAD) is one
// UNAUTHENTICATED status with no detail. A blob shorter than nonce + tag is INVALID_ARGUMENT.
// With random 96-bit nonces, keep the number of seals under one key well below 2^32.
// Thread-safe.

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

inline constexpr size_t kAeadKeySize = 32;
inline constexpr size_t kAeadNonceSize = 12;
inline constexpr size_t kAeadTagSize = 16;

// The nonce comes from the CSPRNG, or from `random` in the second form.
absl::StatusOr<Bytes> AeadSeal(const SecretBytes& key, const SecretBytes& plaintext,
                               std::span<const uint8_t> aad);
absl::StatusOr<Bytes> AeadSeal(const SecretBytes& key, const SecretBytes& plaintext,
                               std::span<const uint8_t> aad, const RandomSource& random);
absl::StatusOr<SecretBytes> AeadOpen(const SecretBytes& key, std::span<const uint8_t> sealed,
                                     std::span<const uint8_t> aad);

// Deterministic sealing with a caller-chosen nonce, ONLY for known-answer self-tests (the HSM
// runs them at start-up, PROTOCOL §9). Reusing a nonce under one key destroys GCM's security.
absl::StatusOr<Bytes> AeadSealWithNonceForSelfTest(const SecretBytes& key,
                                                   std::span<const uint8_t> nonce,
                                                   const SecretBytes& plaintext,
                                                   std::span<const uint8_t> aad);

}  // namespace rkl::crypto
