#pragma once
// Key check values (PROTOCOL §1): 3 bytes that identify a key without revealing it.
//   TDES: leftmost 3 bytes of TDES-ECB(K, 00×8).
//   AES:  leftmost 3 bytes of AES-CMAC(K, 00×16)  (the TR-31 "01" / CMAC method).
// A KCV is public; it is returned as Bytes or as 6 upper-case hex digits. Thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

inline constexpr size_t kKcvSize = 3;

absl::StatusOr<Bytes> Kcv(CipherFamily family, const SecretBytes& key);
absl::StatusOr<std::string> KcvHex(CipherFamily family, const SecretBytes& key);
// Also checks that the key has exactly KeyLength(algorithm) bytes.
absl::StatusOr<Bytes> Kcv(KeyAlgorithm algorithm, const SecretBytes& key);
absl::StatusOr<std::string> KcvHex(KeyAlgorithm algorithm, const SecretBytes& key);

}  // namespace rkl::crypto
