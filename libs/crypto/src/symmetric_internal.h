#pragma once
// Private helpers shared by the symmetric primitives (cipher, cmac, kwp, aead). Not installed.

#include <string>

#include "absl/status/status.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::crypto::internal {

// INTERNAL status for an OpenSSL call that failed on well-formed input. The OpenSSL error
// queue is drained (so it cannot leak into an unrelated later call) and not echoed: its
// text may describe which internal check failed, which a caller must not learn.
absl::Status OpenSslFailure(const char* operation);

// INVALID_ARGUMENT naming the family and the accepted sizes (never the key bytes).
absl::Status BadKeyLength(CipherFamily family, size_t key_length, const char* what);

inline const char* FamilyName(CipherFamily family) {
  return family == CipherFamily::kAes ? "AES" : "TDES";
}

}  // namespace rkl::crypto::internal
