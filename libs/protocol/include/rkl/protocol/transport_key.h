#pragma once
// The transport key TK = TEK ‖ AUK and its two wrapped forms (PROTOCOL §3, §5, §6):
//   Ctk_Pu = RSAES-OAEP-SHA256(Pu, P), label "RKL-TK:" ‖ SN, P = 0x01 ‖ code ‖ TEK ‖ AUK
//   Ctk_pk = H ‖ [len(W)]_2 ‖ W ‖ M, W = AES-256-KWP(PK, P), M = AES-256-CMAC(MAK, H ‖ [len(W)]_2 ‖
//   W)
// Shared by the HSM (translate, import) and terminals (generate), so both sides read the
// same bytes the same way. Parsers are strict: every length is checked exactly.
// Error texts describe the rule broken but never contain key bytes. Callers on the HSM side
// must still collapse decryption/format failures into one uniform error (§5, §10).

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::protocol {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;

inline constexpr uint8_t kTkPayloadFormat = 0x01;
inline constexpr std::string_view kOaepLabelPrefix = "RKL-TK:";
inline constexpr std::string_view kCtkPkMagic = "RKL1";
inline constexpr size_t kCtkPkMacSize = 16;
// Largest Ctk_pk any valid input can produce (SN of 32, AES-256 payload); anything longer
// is refused before parsing.
inline constexpr size_t kMaxCtkPkSize = 4 + 1 + 1 + 32 + 8 + 3 + 3 + 2 + 80 + kCtkPkMacSize;

// The OAEP label that binds Ctk_Pu to its SN.
Bytes OaepLabel(std::string_view sn);

struct TransportKey {
  KeyAlgorithm algorithm;
  SecretBytes tek;
  SecretBytes auk;
};

// P = 0x01 ‖ code ‖ TEK ‖ AUK. INVALID_ARGUMENT when a key has the wrong length.
absl::StatusOr<SecretBytes> EncodeTkPayload(const TransportKey& tk);
// Strict: format 0x01, known code, exact length (and odd parity for TDES keys).
absl::StatusOr<TransportKey> ParseTkPayload(const SecretBytes& payload);

struct CtkPkHeader {
  KeyAlgorithm algorithm;
  std::string sn;
  int64_t created_at_unix_ms = 0;
  std::array<uint8_t, 3> pk_kcv{};
  std::array<uint8_t, 3> mak_kcv{};
};

Bytes EncodeCtkPkHeader(const CtkPkHeader& header);

struct ParsedCtkPk {
  CtkPkHeader header;
  Bytes authenticated;  // H ‖ [len(W)]_2 ‖ W — the bytes M covers
  Bytes wrapped;        // W
  Bytes mac;            // M
};

// Parses the layout only (no key needed): INVALID_ARGUMENT naming the field on any
// malformation. The MAC is not checked here.
absl::StatusOr<ParsedCtkPk> ParseCtkPk(std::span<const uint8_t> ctk_pk);

// Builds Ctk_pk from a parsed payload. pk and mak are AES-256 keys.
absl::StatusOr<Bytes> BuildCtkPk(const CtkPkHeader& header, const SecretBytes& payload,
                                 const SecretBytes& pk, const SecretBytes& mak);

// Verifies M (constant time) before anything else, then unwraps and validates P.
// UNAUTHENTICATED when M fails or unwrapping fails; INVALID_ARGUMENT when the payload
// inside disagrees with the header.
absl::StatusOr<TransportKey> OpenCtkPk(const ParsedCtkPk& parsed, const SecretBytes& pk,
                                       const SecretBytes& mak);

}  // namespace rkl::protocol
