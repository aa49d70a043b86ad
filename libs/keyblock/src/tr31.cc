#include "rkl/keyblock/tr31.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kdf.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::keyblock {
namespace {

using crypto::CipherFamily;
using crypto::SecretBytes;

constexpr size_t kFixedHeaderLength = 16;
constexpr size_t kMaxBlockLength = 9999;   // 4 decimal digits
constexpr size_t kMaxOptionalBlocks = 99;  // 2 decimal digits
constexpr size_t kMaxShortOptionalBlock = 0xFF;
constexpr char kPaddingBlockId[] = "PB";

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsUpperHex(char c) { return IsDigit(c) || (c >= 'A' && c <= 'F'); }
bool IsAlnum(char c) { return IsDigit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool IsPrintable(char c) { return c >= 0x20 && c <= 0x7E; }

bool AllOf(std::string_view s, bool (*pred)(char)) { return std::all_of(s.begin(), s.end(), pred); }

// Shows a header character in a message: printable ones as themselves, others as a code, so
// a corrupted block cannot inject control characters into logs. (Header text is public.)
std::string Show(char c) {
  if (IsPrintable(c)) return std::string("'") + c + "'";
  return absl::StrCat("0x", absl::Hex(static_cast<uint8_t>(c), absl::kZeroPad2));
}
std::string Show(std::string_view s) {
  std::string out = "\"";
  for (char c : s) out += IsPrintable(c) ? std::string(1, c) : "?";
  return out + "\"";
}

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("TR-31: ", std::string(what)));
}

size_t ParseNumber(std::string_view s, int base) {
  size_t v = 0;
  for (char c : s) v = v * base + (IsDigit(c) ? c - '0' : c - 'A' + 10);
  return v;
}

std::string UpperHexField(size_t value, size_t width) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string s(width, '0');
  for (size_t i = width; i > 0 && value != 0; --i, value >>= 4) s[i - 1] = kDigits[value & 0xF];
  return s;
}

std::string DecimalField(size_t value, size_t width) {
  std::string s = std::to_string(value);
  if (s.size() < width) s.insert(0, width - s.size(), '0');
  return s;
}

CipherFamily FamilyOf(KeyBlockVersion version) {
  return version == KeyBlockVersion::kB ? CipherFamily::kTdes : CipherFamily::kAes;
}

absl::Status CheckKbpk(KeyBlockVersion version, const SecretBytes& kbpk) {
  if (crypto::IsValidKeyLength(FamilyOf(version), kbpk.size())) return absl::OkStatus();
  return Malformed(
      version == KeyBlockVersion::kB
          ? absl::StrCat("version B needs a TDES KBPK of 16 or 24 bytes, got ", kbpk.size())
          : absl::StrCat("version D needs an AES KBPK of 16, 24 or 32 bytes, got ", kbpk.size()));
}

// Key sizes TR-31 allows for the algorithms rkl handles; others are not policed here.
absl::Status CheckKeyLengthForAlgorithm(char algorithm, size_t key_length) {
  if (algorithm == 'A' && !crypto::IsValidKeyLength(CipherFamily::kAes, key_length)) {
    return Malformed(
        absl::StrCat("an algorithm 'A' key must be 16, 24 or 32 bytes, got ", key_length));
  }
  if (algorithm == 'T' && !crypto::IsValidKeyLength(CipherFamily::kTdes, key_length)) {
    return Malformed(absl::StrCat("an algorithm 'T' key must be 16 or 24 bytes, got ", key_length));
  }
  if (key_length == 0) return Malformed("the key is empty");
  return absl::OkStatus();
}

absl::Status CheckHeaderFields(const KeyBlockHeader& h) {
  if (h.version != KeyBlockVersion::kB && h.version != KeyBlockVersion::kD) {
    return Malformed(absl::StrCat("unsupported key block version ",
                                  Show(static_cast<char>(h.version)),
                                  "; only 'B' and 'D' are supported"));
  }
  if (h.key_usage.size() != 2 || !AllOf(h.key_usage, IsAlnum)) {
    return Malformed(absl::StrCat("key usage ", Show(h.key_usage), " is not 2 alphanumerics"));
  }
  if (!IsAlnum(h.algorithm)) {
    return Malformed(absl::StrCat("algorithm ", Show(h.algorithm), " is not alphanumeric"));
  }
  if (!IsAlnum(h.mode_of_use)) {
    return Malformed(absl::StrCat("mode of use ", Show(h.mode_of_use), " is not alphanumeric"));
  }
  if (h.key_version.size() != 2 || !AllOf(h.key_version, IsAlnum)) {
    return Malformed(
        absl::StrCat("key version number ", Show(h.key_version), " is not 2 alphanumerics"));
  }
  if (!IsAlnum(h.exportability)) {
    return Malformed(absl::StrCat("exportability ", Show(h.exportability), " is not alphanumeric"));
  }
  return absl::OkStatus();
}

// Header text as covered by the MAC, with `total_length` in the length field.
std::string HeaderText(const KeyBlockHeader& h, const std::vector<OptionalBlock>& blocks,
                       size_t total_length) {
  std::string out;
  out += static_cast<char>(h.version);
  out += DecimalField(total_length, 4);
  out += h.key_usage;
  out += h.algorithm;
  out += h.mode_of_use;
  out += h.key_version;
  out += h.exportability;
  out += DecimalField(blocks.size(), 2);
  out += "00";  // reserved
  for (const OptionalBlock& b : blocks) {
    out += b.id;
    const size_t short_length = 4 + b.data.size();
    if (short_length <= kMaxShortOptionalBlock) {
      out += UpperHexField(short_length, 2);
    } else {
      // Long form: "00", then the number of hex digits of the length ("04"), then the length
      // of the whole optional block in that many hex digits.
      out += "0004";
      out += UpperHexField(10 + b.data.size(), 4);
    }
    out += b.data;
  }
  return out;
}

size_t EncodedLength(const OptionalBlock& b) {
  return 4 + b.data.size() <= kMaxShortOptionalBlock ? 4 + b.data.size() : 10 + b.data.size();
}

// MAC input: header text ‖ clear payload. The payload holds the key, so the buffer is secret.
SecretBytes MacInput(std::string_view header_text, const SecretBytes& payload) {
  return SecretBytes::CopyOf(AsBytes(header_text)).Concat(payload);
}

absl::StatusOr<Bytes> DecodeHex(std::string_view text, const char* field) {
  if (!AllOf(text, IsUpperHex)) {
    return Malformed(absl::StrCat(field, " contains a character that is not upper-case hex",
                                  " (does the optional block count match the blocks present?)"));
  }
  return FromHex(text, field);
}

}  // namespace

absl::StatusOr<KeyBlockKeys> DeriveKeyBlockKeys(KeyBlockVersion version, const SecretBytes& kbpk) {
  RKL_RETURN_IF_ERROR(CheckKbpk(version, kbpk));
  // Algorithm indicator of TR-31:2018: 0000 2-key TDES, 0001 3-key TDES, 0002/3/4 AES-128/192/256.
  uint16_t algorithm_indicator;
  if (version == KeyBlockVersion::kB) {
    algorithm_indicator = kbpk.size() == 16 ? 0x0000 : 0x0001;
  } else {
    algorithm_indicator = kbpk.size() == 16 ? 0x0002 : kbpk.size() == 24 ? 0x0003 : 0x0004;
  }
  // Derivation data = counter ‖ usage ‖ 00 ‖ algorithm ‖ [bits]_2, which is exactly the
  // SP 800-108 layout of crypto::KdfCounterCmac with label = usage, context = algorithm.
  const uint8_t context[] = {static_cast<uint8_t>(algorithm_indicator >> 8),
                             static_cast<uint8_t>(algorithm_indicator)};
  const uint8_t kEncryptionUsage[] = {0x00, 0x00};
  const uint8_t kAuthenticationUsage[] = {0x00, 0x01};
  const size_t bits = kbpk.size() * 8;
  const CipherFamily family = FamilyOf(version);
  KeyBlockKeys keys;
  RKL_ASSIGN_OR_RETURN(keys.encryption,
                       crypto::KdfCounterCmac(family, kbpk, kEncryptionUsage, context, bits));
  RKL_ASSIGN_OR_RETURN(keys.authentication,
                       crypto::KdfCounterCmac(family, kbpk, kAuthenticationUsage, context, bits));
  return keys;
}

absl::StatusOr<std::string> Build(const SecretBytes& kbpk, const KeyBlockHeader& header,
                                  const SecretBytes& key, const crypto::RandomSource& padding) {
  RKL_RETURN_IF_ERROR(CheckHeaderFields(header));
  RKL_RETURN_IF_ERROR(CheckKbpk(header.version, kbpk));
  RKL_RETURN_IF_ERROR(CheckKeyLengthForAlgorithm(header.algorithm, key.size()));
  if (key.size() > 0xFFFF / 8) return Malformed("the key is too long for the 16-bit length field");

  const CipherFamily family = FamilyOf(header.version);
  const size_t block_size = crypto::BlockSize(family);

  std::vector<OptionalBlock> blocks = header.optional_blocks;
  size_t header_length = kFixedHeaderLength;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const OptionalBlock& b = blocks[i];
    if (b.id.size() != 2 || !AllOf(b.id, IsAlnum)) {
      return Malformed(
          absl::StrCat("optional block ", i + 1, " ID ", Show(b.id), " is not 2 alphanumerics"));
    }
    if (!AllOf(b.data, IsPrintable)) {
      return Malformed(absl::StrCat("optional block ", b.id, " data is not printable ASCII"));
    }
    if (b.id == kPaddingBlockId && i + 1 != blocks.size()) {
      return Malformed("the PB optional block must be the last one");
    }
    if (b.data.size() > kMaxBlockLength) {
      return Malformed(absl::StrCat("optional block ", b.id, " is too long"));
    }
    header_length += EncodedLength(b);
  }
  if (header_length % block_size != 0) {
    if (!blocks.empty() && blocks.back().id == kPaddingBlockId) {
      return Malformed(absl::StrCat("header with the given PB block is ", header_length,
                                    " characters, not a multiple of ", block_size));
    }
    // The shortest PB block is 4 characters, so the padding may need one more cipher block.
    size_t pb_length = block_size - header_length % block_size;
    if (pb_length < 4) pb_length += block_size;
    blocks.push_back({kPaddingBlockId, std::string(pb_length - 4, '0')});
    header_length += pb_length;
  }
  if (blocks.size() > kMaxOptionalBlocks) {
    return Malformed(absl::StrCat(blocks.size(), " optional blocks exceed the maximum of 99"));
  }

  // Payload = [bits]_2 ‖ key ‖ padding, padded to whole cipher blocks.
  const size_t payload_length = (2 + key.size() + block_size - 1) / block_size * block_size;
  SecretBytes payload(payload_length);
  {
    auto p = payload.RevealSecretMutable();
    const size_t bits = key.size() * 8;
    p[0] = static_cast<uint8_t>(bits >> 8);
    p[1] = static_cast<uint8_t>(bits);
    std::copy(key.RevealSecret().begin(), key.RevealSecret().end(), p.begin() + 2);
    padding(p.subspan(2 + key.size()));
  }

  const size_t mac_length = crypto::CmacSize(family);
  const size_t total_length = header_length + 2 * payload_length + 2 * mac_length;
  if (total_length > kMaxBlockLength) {
    return Malformed(absl::StrCat("key block would be ", total_length,
                                  " characters; the length field allows 9999"));
  }
  const std::string header_text = HeaderText(header, blocks, total_length);
  if (header_text.size() != header_length) return absl::InternalError("TR-31: header length");

  RKL_ASSIGN_OR_RETURN(KeyBlockKeys keys, DeriveKeyBlockKeys(header.version, kbpk));
  RKL_ASSIGN_OR_RETURN(Bytes mac,
                       crypto::Cmac(family, keys.authentication, MacInput(header_text, payload)));
  RKL_ASSIGN_OR_RETURN(Bytes encrypted, crypto::Encrypt(family, crypto::BlockMode::kCbc,
                                                        keys.encryption, mac, payload));
  std::string out = header_text;
  out += ToHex(encrypted);
  out += ToHex(mac);
  return out;
}

absl::StatusOr<ParsedKeyBlock> Parse(const SecretBytes& kbpk, std::string_view block) {
  if (block.size() < kFixedHeaderLength) {
    return Malformed(absl::StrCat("key block is ", block.size(),
                                  " characters, shorter than the 16-character header"));
  }
  ParsedKeyBlock result;
  KeyBlockHeader& h = result.header;
  const char version = block[0];
  if (version != 'B' && version != 'D') {
    return Malformed(absl::StrCat("unsupported key block version ", Show(version),
                                  "; only 'B' and 'D' are supported"));
  }
  h.version = static_cast<KeyBlockVersion>(version);

  const std::string_view length_field = block.substr(1, 4);
  if (!AllOf(length_field, IsDigit)) {
    return Malformed(
        absl::StrCat("block length field ", Show(length_field), " is not 4 decimal digits"));
  }
  const size_t declared_length = ParseNumber(length_field, 10);
  if (declared_length != block.size()) {
    return Malformed(absl::StrCat("block length field says ", declared_length,
                                  " characters but the block has ", block.size()));
  }

  h.key_usage = std::string(block.substr(5, 2));
  h.algorithm = block[7];
  h.mode_of_use = block[8];
  h.key_version = std::string(block.substr(9, 2));
  h.exportability = block[11];
  RKL_RETURN_IF_ERROR(CheckHeaderFields(h));

  const std::string_view count_field = block.substr(12, 2);
  if (!AllOf(count_field, IsDigit)) {
    return Malformed(
        absl::StrCat("optional block count ", Show(count_field), " is not 2 decimal digits"));
  }
  const size_t count = ParseNumber(count_field, 10);
  if (block.substr(14, 2) != "00") {
    return Malformed(absl::StrCat("reserved field ", Show(block.substr(14, 2)), " is not \"00\""));
  }

  size_t pos = kFixedHeaderLength;
  for (size_t i = 0; i < count; ++i) {
    const std::string where = absl::StrCat("optional block ", i + 1, " of ", count);
    if (block.size() - pos < 4) return Malformed(absl::StrCat(where, " is truncated"));
    const std::string_view id = block.substr(pos, 2);
    if (!AllOf(id, IsAlnum)) {
      return Malformed(absl::StrCat(where, " has ID ", Show(id), ", not 2 alphanumerics"));
    }
    const std::string named = absl::StrCat(where, " (", std::string(id), ")");
    const std::string_view length_hex = block.substr(pos + 2, 2);
    if (!AllOf(length_hex, IsUpperHex)) {
      return Malformed(absl::StrCat(named, " length ", Show(length_hex), " is not 2 hex digits"));
    }
    size_t length = ParseNumber(length_hex, 16);
    size_t data_offset = 4;
    if (length == 0) {
      // Long form: "00" ‖ number of length digits (2 hex) ‖ length (that many hex digits).
      if (block.size() - pos < 6) return Malformed(absl::StrCat(named, " is truncated"));
      const std::string_view digits_hex = block.substr(pos + 4, 2);
      if (!AllOf(digits_hex, IsUpperHex)) {
        return Malformed(
            absl::StrCat(named, " length-of-length ", Show(digits_hex), " is not 2 hex digits"));
      }
      const size_t digits = ParseNumber(digits_hex, 16);
      if (digits == 0 || digits > 4 || block.size() - pos < 6 + digits) {
        return Malformed(absl::StrCat(named, " has an invalid long-form length"));
      }
      const std::string_view long_hex = block.substr(pos + 6, digits);
      if (!AllOf(long_hex, IsUpperHex)) {
        return Malformed(absl::StrCat(named, " long-form length ", Show(long_hex), " is not hex"));
      }
      length = ParseNumber(long_hex, 16);
      data_offset = 6 + digits;
    }
    if (length < data_offset) {
      return Malformed(absl::StrCat(named, " length ", length, " is shorter than its own ID and",
                                    " length fields"));
    }
    if (length > block.size() - pos) {
      return Malformed(absl::StrCat(named, " length ", length, " runs past the end of the block"));
    }
    const std::string_view data = block.substr(pos + data_offset, length - data_offset);
    if (!AllOf(data, IsPrintable)) {
      return Malformed(absl::StrCat(named, " data is not printable ASCII"));
    }
    if (id == kPaddingBlockId && i + 1 != count) {
      return Malformed("the PB optional block must be the last one");
    }
    h.optional_blocks.push_back({std::string(id), std::string(data)});
    pos += length;
  }

  const CipherFamily family = FamilyOf(h.version);
  const size_t block_size = crypto::BlockSize(family);
  if (pos % block_size != 0) {
    return Malformed(absl::StrCat("header with optional blocks is ", pos,
                                  " characters, not a multiple of the cipher block size ",
                                  block_size));
  }
  const size_t mac_chars = 2 * crypto::CmacSize(family);
  const size_t rest = block.size() - pos;
  if (rest < mac_chars + 2 * block_size) {
    return Malformed(absl::StrCat(rest, " characters after the header cannot hold the key data",
                                  " and the ", mac_chars, "-character MAC"));
  }
  const size_t key_data_chars = rest - mac_chars;
  if (key_data_chars % (2 * block_size) != 0) {
    return Malformed(absl::StrCat("encrypted key data is ", key_data_chars,
                                  " hex characters, not a whole number of cipher blocks"));
  }
  RKL_ASSIGN_OR_RETURN(Bytes encrypted,
                       DecodeHex(block.substr(pos, key_data_chars), "encrypted key data"));
  RKL_ASSIGN_OR_RETURN(Bytes mac, DecodeHex(block.substr(pos + key_data_chars), "MAC"));

  RKL_RETURN_IF_ERROR(CheckKbpk(h.version, kbpk));
  RKL_ASSIGN_OR_RETURN(KeyBlockKeys keys, DeriveKeyBlockKeys(h.version, kbpk));
  RKL_ASSIGN_OR_RETURN(
      SecretBytes payload,
      crypto::DecryptToSecret(family, crypto::BlockMode::kCbc, keys.encryption, mac, encrypted));
  // Authenticate before reading the payload: nothing about unauthenticated plaintext (such as
  // whether its length field makes sense) may be revealed.
  if (!crypto::CmacVerify(family, keys.authentication, MacInput(block.substr(0, pos), payload),
                          mac)) {
    return absl::UnauthenticatedError(
        "TR-31: key block MAC does not verify (wrong KBPK or altered block)");
  }

  const auto p = payload.RevealSecret();
  const size_t bits = (static_cast<size_t>(p[0]) << 8) | p[1];
  if (bits == 0 || bits % 8 != 0 || bits / 8 > p.size() - 2) {
    return Malformed(absl::StrCat("key length field (", bits, " bits) is inconsistent with ",
                                  p.size() - 2, " bytes of key data"));
  }
  RKL_RETURN_IF_ERROR(CheckKeyLengthForAlgorithm(h.algorithm, bits / 8));
  result.key = payload.Sub(2, bits / 8);
  return result;
}

}  // namespace rkl::keyblock
