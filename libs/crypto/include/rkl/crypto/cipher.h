#pragma once
// Raw block-cipher modes (ECB, CBC) for AES (16/24/32-byte keys) and TDES (16-byte 2-key,
// 24-byte 3-key), with NO padding: every protocol in rkl (PROTOCOL §7, TR-31) defines its own
// framing, so input that is not a whole number of blocks is a caller bug and is rejected with
// INVALID_ARGUMENT rather than silently padded.
//
// Guarantees: keys are only read through `const SecretBytes&`; the Decrypt variant that yields
// key material returns SecretBytes, so a decrypted key never sits in a plain vector. ECB takes
// an empty IV; CBC needs an IV of exactly one block. Stateless and thread-safe.

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

enum class BlockMode { kEcb, kCbc };

// Ciphertext is public.
absl::StatusOr<Bytes> Encrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, std::span<const uint8_t> plaintext);
// Same, for plaintext that is itself secret (a key being wrapped).
absl::StatusOr<Bytes> Encrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, const SecretBytes& plaintext);

// For ciphertexts whose plaintext is public (e.g. the nonces of PROTOCOL §7).
absl::StatusOr<Bytes> Decrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, std::span<const uint8_t> ciphertext);
// For ciphertexts that hold key material.
absl::StatusOr<SecretBytes> DecryptToSecret(CipherFamily family, BlockMode mode,
                                            const SecretBytes& key, std::span<const uint8_t> iv,
                                            std::span<const uint8_t> ciphertext);

}  // namespace rkl::crypto
