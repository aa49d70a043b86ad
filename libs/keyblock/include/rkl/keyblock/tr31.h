#pragma once
// ANSI X9.143 / TR-31:2018 key blocks, versions B (TDES KBPK, 16 or 24 bytes) and D (AES KBPK,
// 16, 24 or 32 bytes), using the key derivation binding method:
//   KBEK, KBAK = SP 800-108 CMAC counter-mode KDF of the KBPK
//                (counter ‖ usage 0000/0001 ‖ 00 ‖ algorithm 0000..0004 ‖ [bits]_2);
//   payload    = [key length in bits]_2 ‖ key ‖ random padding to whole cipher blocks;
//   MAC        = CMAC(KBAK, header text ‖ payload)  (8 bytes for B, 16 for D);
//   key data   = CBC(KBEK, IV = MAC, payload);
//   block      = header text ‖ HEX(key data) ‖ HEX(MAC)   (upper-case hex).
//
// Guarantees:
//  - Parse verifies the MAC (constant time) before it interprets a single byte of the
//    decrypted payload; a MAC mismatch, including one caused by a wrong KBPK, is
//    UNAUTHENTICATED with one fixed message.
//  - Every structural defect is INVALID_ARGUMENT with a message naming the field and the rule.
//  - No message ever contains key, KBPK or payload bytes; the clear key leaves only as
//    SecretBytes.
//  - Build and Parse are pure functions of their arguments (padding comes from the injected
//    RandomSource) and thread-safe.

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::keyblock {

enum class KeyBlockVersion : char {
  kB = 'B',  // TDES key derivation binding method
  kD = 'D',  // AES key derivation binding method
};

// One optional header block, e.g. {"KC", "0108793E"}. `id` is 2 alphanumeric characters;
// `data` is printable ASCII. Build picks the short or long length form.
struct OptionalBlock {
  std::string id;
  std::string data;
  friend bool operator==(const OptionalBlock&, const OptionalBlock&) = default;
};

// The clear header of a key block. The block length, the optional block count and the
// reserved field are computed by Build and checked by Parse, so they are not stored here.
struct KeyBlockHeader {
  KeyBlockVersion version = KeyBlockVersion::kD;
  std::string key_usage;  // 2 alphanumerics, e.g. "K0", "B0", "P0"
  char algorithm = 'A';   // e.g. 'A' AES, 'T' TDES
  char mode_of_use = 'N';
  std::string key_version = "00";
  char exportability = 'N';
  std::vector<OptionalBlock> optional_blocks;  // in order of appearance
  friend bool operator==(const KeyBlockHeader&, const KeyBlockHeader&) = default;
};

struct ParsedKeyBlock {
  KeyBlockHeader header;
  crypto::SecretBytes key;
};

// Builds a key block protecting `key` under `kbpk`.
// If the header text (16 characters plus optional blocks) is not a whole number of cipher
// blocks, a "PB" optional block of '0' characters is appended, as TR-31 requires; a
// caller-supplied PB must be the last optional block and must make the length exact.
// For algorithm 'A' the key must be 16/24/32 bytes, for 'T' 16/24 bytes.
// `padding` fills the payload padding; tests inject a fixed source to reproduce vectors.
absl::StatusOr<std::string> Build(const crypto::SecretBytes& kbpk, const KeyBlockHeader& header,
                                  const crypto::SecretBytes& key,
                                  const crypto::RandomSource& padding = crypto::FillRandom);

// Parses and authenticates `block` under `kbpk`; returns the header (PB included) and the key.
absl::StatusOr<ParsedKeyBlock> Parse(const crypto::SecretBytes& kbpk, std::string_view block);

// The derived block encryption and authentication keys (TR-31 key derivation binding method).
// Exposed for known-answer tests and for implementers checking interoperability.
struct KeyBlockKeys {
  crypto::SecretBytes encryption;      // KBEK
  crypto::SecretBytes authentication;  // KBAK
};
absl::StatusOr<KeyBlockKeys> DeriveKeyBlockKeys(KeyBlockVersion version,
                                                const crypto::SecretBytes& kbpk);

}  // namespace rkl::keyblock
