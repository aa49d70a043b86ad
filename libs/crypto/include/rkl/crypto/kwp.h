#pragma once
// AES Key Wrap with Padding (RFC 5649 / NIST SP 800-38F KWP) under a 16-, 24- or 32-byte KEK.
// rkl uses AES-256 KEKs (PK, PROTOCOL §5); the other sizes exist for the published vectors.
//
// Guarantees: the wrapped form is public (Bytes); the unwrapped key is SecretBytes. Unwrap
// of a well-formed but altered or wrongly keyed input fails with a single UNAUTHENTICATED
// status carrying no detail, so no caller (or log) learns which integrity check failed.
// Input of impossible length (empty key; wrapped length not a multiple of 8 or below 16) is
// INVALID_ARGUMENT, since lengths are visible to anyone anyway. Thread-safe.

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

// Output length: 8 + key.size() rounded up to a multiple of 8.
absl::StatusOr<Bytes> KwpWrap(const SecretBytes& kek, const SecretBytes& key);
absl::StatusOr<SecretBytes> KwpUnwrap(const SecretBytes& kek, std::span<const uint8_t> wrapped);

}  // namespace rkl::crypto
