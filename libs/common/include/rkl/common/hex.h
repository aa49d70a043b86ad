#pragma once
// Hex encoding of public data (KCVs, ciphertexts, identifiers). Output is upper case, as
// PROTOCOL.md asks for hex on the wire; input is accepted in either case.
// Never use these on clear key material: SecretBytes has no conversion to a byte span
// except through its one named accessor, precisely so that such a call is visible.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rkl {

using Bytes = std::vector<uint8_t>;

std::string ToHex(std::span<const uint8_t> data);
// INVALID_ARGUMENT on odd length or a non-hex character; the message names `field`.
absl::StatusOr<Bytes> FromHex(std::string_view hex, std::string_view field = "hex");
// Decodes the 2 * out.size() digits at the start of `hex` straight into `out`, so a caller
// can decode into memory it manages (secure memory for a key file). Returns the offset of the
// first character that is not a hex digit, nullopt when all are.
std::optional<size_t> DecodeHexInto(std::string_view hex, std::span<uint8_t> out);

inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
inline std::string_view AsString(std::span<const uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

}  // namespace rkl
