#pragma once
// ECDSA P-256 with SHA-256 for operator-card signatures over transport-key packages
// (PROTOCOL.md §4).
//
// Guarantees:
//  - keys are always on P-256; signatures are DER ECDSA-Sig-Value (the form MTMS stores
//    byte-exact);
//  - verification is strict: a signature that is not exactly one canonical DER
//    ECDSA-Sig-Value is INVALID_ARGUMENT (malformed input, PROTOCOL.md §10); a well-formed
//    signature that does not verify under the key and message is UNAUTHENTICATED.
// Thread safety: free functions; keys are only read.

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"

namespace rkl::crypto {

absl::StatusOr<PrivateKey> GenerateEcP256Key();

// ECDSA-P256-SHA256 over `message`, DER signature. INVALID_ARGUMENT if `key` is not EC P-256.
absl::StatusOr<Bytes> EcdsaSign(const PrivateKey& key, std::span<const uint8_t> message);

// OK, or: INVALID_ARGUMENT if `key` is not EC P-256 or `signature` is not canonical DER;
// UNAUTHENTICATED "signature: does not verify" otherwise.
absl::Status EcdsaVerify(const PublicKey& key, std::span<const uint8_t> message,
                         std::span<const uint8_t> signature);

}  // namespace rkl::crypto
