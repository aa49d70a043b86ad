#pragma once
// Private helpers shared by the symmetric primitives (cipher, cmac, kwp, aead). Not installed.

#include <openssl/evp.h>

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

// The cipher `name` (e.g. "AES-128-ECB") fetched from OpenSSL's default providers once and
// kept for the life of the process; `legacy` (EVP_aes_128_ecb() ...) if the fetch fails.
// OpenSSL 3 looks a legacy EVP_aes_*() object up in its provider store, under a lock, every
// time a context is initialised with it; with an object fetched beforehand it does not.
// Call it through a function-local static, one per algorithm, so that each use costs no
// lookup of ours either.
const EVP_CIPHER* FetchCipher(const char* name, const EVP_CIPHER* legacy);

inline const char* FamilyName(CipherFamily family) {
  return family == CipherFamily::kAes ? "AES" : "TDES";
}

}  // namespace rkl::crypto::internal
