#pragma once
// Key derivation: NIST SP 800-108 counter mode with PRF = CMAC, in exactly the layout of
// PROTOCOL §7:
//   K(i) = CMAC(K, [i]_1 ‖ label ‖ 0x00 ‖ context ‖ [L]_2),  output = leftmost L bits of
//   K(1) ‖ K(2) ‖ …
// (one-byte counter, two-byte length — not the 32-bit fields OpenSSL's KBKDF uses).
// TR-31 versions B and D derive KBEK/KBAK with the same layout (label = usage indicator,
// context = algorithm indicator), which rkl::keyblock relies on.
//
// Guarantees: the output is SecretBytes; L must be a positive multiple of 8, at most 65535,
// and need at most 255 PRF blocks, else INVALID_ARGUMENT. Stateless and thread-safe.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

absl::StatusOr<SecretBytes> KdfCounterCmac(CipherFamily family, const SecretBytes& key,
                                           std::span<const uint8_t> label,
                                           std::span<const uint8_t> context, size_t length_bits);
// Text label and context, e.g. KdfCounterCmac(kAes, auk, "RKL-AUTH-K2P", sn, 128).
absl::StatusOr<SecretBytes> KdfCounterCmac(CipherFamily family, const SecretBytes& key,
                                           std::string_view label, std::string_view context,
                                           size_t length_bits);

}  // namespace rkl::crypto
