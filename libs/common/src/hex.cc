#include "rkl/common/hex.h"

#include "absl/status/status.h"

namespace rkl {
namespace {
int Nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}
}  // namespace

std::string ToHex(std::span<const uint8_t> data) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(data.size() * 2);
  for (uint8_t b : data) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0F]);
  }
  return out;
}

absl::StatusOr<Bytes> FromHex(std::string_view hex, std::string_view field) {
  if (hex.size() % 2 != 0) {
    return absl::InvalidArgumentError(std::string(field) + ": hex must have an even length");
  }
  Bytes out(hex.size() / 2);
  if (std::optional<size_t> bad = DecodeHexInto(hex, out)) {
    return absl::InvalidArgumentError(std::string(field) + ": not a hex digit at offset " +
                                      std::to_string(*bad));
  }
  return out;
}

std::optional<size_t> DecodeHexInto(std::string_view hex, std::span<uint8_t> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = Nibble(hex[2 * i]), lo = Nibble(hex[2 * i + 1]);
    if (hi < 0) return 2 * i;
    if (lo < 0) return 2 * i + 1;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return std::nullopt;
}

}  // namespace rkl
