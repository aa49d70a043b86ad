#pragma once
// rkl's TR-31 profile for TMK delivery (PROTOCOL §8): the TMK travels in a key block under the
// terminal's TEK with
//   version 'D' for an AES TEK, 'B' for a TDES TEK; key usage "K0"; algorithm 'A' or 'T' (of
//   the TMK); mode of use 'D'; key version "00"; exportability 'N';
//   optional blocks KC = KCV of the TMK and KP = KCV of the TEK, each as "01" ‖ KCV for an AES
//   key (CMAC method) or "00" ‖ KCV for a TDES key (legacy method), then PB padding if needed.
// The result is a plain TR-31 block that any conforming implementation decodes.
//
// Guarantees: ParseTmkBlock authenticates the block (UNAUTHENTICATED on a MAC failure or wrong
// TEK) before checking the profile; any deviation from the profile, or a KC/KP value that does
// not match the actual keys, is INVALID_ARGUMENT naming the field. The TMK is returned only as
// SecretBytes. Thread-safe.

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/keyblock/tr31.h"

namespace rkl::keyblock {

// The profile header for these keys (without PB; Build adds it).
absl::StatusOr<KeyBlockHeader> TmkBlockHeader(const crypto::SecretBytes& tek,
                                              crypto::KeyAlgorithm tek_algorithm,
                                              const crypto::SecretBytes& tmk,
                                              crypto::KeyAlgorithm tmk_algorithm);

// The key block that delivers `tmk` under `tek`. Both keys must have exactly the length of
// their algorithm.
absl::StatusOr<std::string> BuildTmkBlock(const crypto::SecretBytes& tek,
                                          crypto::KeyAlgorithm tek_algorithm,
                                          const crypto::SecretBytes& tmk,
                                          crypto::KeyAlgorithm tmk_algorithm,
                                          const crypto::RandomSource& padding = crypto::FillRandom);

struct TmkDelivery {
  crypto::SecretBytes tmk;
  crypto::KeyAlgorithm tmk_algorithm;
  std::string tmk_kcv;  // 6 upper-case hex digits, as carried in KC and verified
};

// Terminal side: parses `block` under `tek` and checks every profile rule. The TMK algorithm
// is taken from the header and the key length (T/16 → TDES2, A/16 → AES128, A/32 → AES256);
// callers that require it to equal the TEK's algorithm (PROTOCOL §1) compare it themselves.
absl::StatusOr<TmkDelivery> ParseTmkBlock(const crypto::SecretBytes& tek,
                                          crypto::KeyAlgorithm tek_algorithm,
                                          std::string_view block);

}  // namespace rkl::keyblock
