#pragma once
// Key algorithms and block-cipher families used by rkl.
//
// KeyAlgorithm is the terminal key algorithm of PROTOCOL §1 (TEK, AUK and TMK of one terminal
// share it); its enumerator values are the wire codes, so a code read from the wire is only
// ever turned into a KeyAlgorithm through KeyAlgorithmFromCode(), which rejects anything else.
// CipherFamily is the wider notion the primitives need: TR-31 and KWP also meet 24-byte
// (3-key TDES, AES-192) keys, which are not terminal algorithms.
// Everything here is a pure function of its arguments and thread-safe.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace rkl::crypto {

enum class KeyAlgorithm : uint8_t {
  kTdes2 = 0x01,   // double-length TDES, 16 bytes, odd parity
  kAes128 = 0x11,  // default
  kAes256 = 0x13,
};

enum class CipherFamily { kAes, kTdes };

uint8_t KeyAlgorithmCode(KeyAlgorithm algorithm);
// INVALID_ARGUMENT for any code not listed in PROTOCOL §1.
absl::StatusOr<KeyAlgorithm> KeyAlgorithmFromCode(uint8_t code);

// "TDES2", "AES128", "AES256". Note: std::string_view, which Debian's Abseil does not accept
// directly; wrap it in std::string(...) before handing it to absl::StrCat.
std::string_view KeyAlgorithmName(KeyAlgorithm algorithm);
// Exact, case-sensitive match of the names above; INVALID_ARGUMENT otherwise.
absl::StatusOr<KeyAlgorithm> KeyAlgorithmFromName(std::string_view name);

size_t KeyLength(KeyAlgorithm algorithm);  // 16, 16, 32
size_t BlockSize(KeyAlgorithm algorithm);  // 8 for TDES, 16 for AES
CipherFamily FamilyOf(KeyAlgorithm algorithm);
size_t BlockSize(CipherFamily family);

// True if `key_length` is a key size the family's primitives accept:
// AES 16/24/32 bytes, TDES 16 (2-key) or 24 (3-key) bytes.
bool IsValidKeyLength(CipherFamily family, size_t key_length);

}  // namespace rkl::crypto
