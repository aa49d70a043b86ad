#pragma once
// CMAC (NIST SP 800-38B) over AES (16/24/32-byte keys; 16-byte tag) and TDES (16/24-byte keys;
// 8-byte tag).
//
// A 16-byte key is both a valid AES-128 and a valid 2-key TDES key, so the family is always
// named explicitly (or implied by a KeyAlgorithm); the key length then picks the variant.
// Guarantees: a MAC is public and is returned as Bytes; CmacToSecret is for CMAC used as a
// PRF (key derivation), whose output is key material. CmacVerify compares in constant time and
// accepts only a full-length tag. Stateless and thread-safe.

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

// Tag length: the block size of the family (16 AES, 8 TDES).
size_t CmacSize(CipherFamily family);

absl::StatusOr<Bytes> Cmac(CipherFamily family, const SecretBytes& key,
                           std::span<const uint8_t> data);
// MAC over secret data (e.g. TR-31 clear key data); the tag itself is public.
absl::StatusOr<Bytes> Cmac(CipherFamily family, const SecretBytes& key, const SecretBytes& data);
// Checks that the key has exactly KeyLength(algorithm) bytes.
absl::StatusOr<Bytes> Cmac(KeyAlgorithm algorithm, const SecretBytes& key,
                           std::span<const uint8_t> data);

// CMAC as a PRF: the output is key material.
absl::StatusOr<SecretBytes> CmacToSecret(CipherFamily family, const SecretBytes& key,
                                         std::span<const uint8_t> data);

// True only if `mac` is the full CMAC of `data`; false on any mismatch or error (bad key
// length included), so a caller cannot tell why verification failed.
bool CmacVerify(CipherFamily family, const SecretBytes& key, std::span<const uint8_t> data,
                std::span<const uint8_t> mac);
bool CmacVerify(CipherFamily family, const SecretBytes& key, const SecretBytes& data,
                std::span<const uint8_t> mac);

}  // namespace rkl::crypto
