#include "rkl/crypto/key_algorithm.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/enum_names.h"

namespace rkl::crypto {

uint8_t KeyAlgorithmCode(KeyAlgorithm algorithm) { return static_cast<uint8_t>(algorithm); }

absl::StatusOr<KeyAlgorithm> KeyAlgorithmFromCode(uint8_t code) {
  switch (code) {
    case 0x01:
      return KeyAlgorithm::kTdes2;
    case 0x11:
      return KeyAlgorithm::kAes128;
    case 0x13:
      return KeyAlgorithm::kAes256;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("key algorithm code 0x", absl::Hex(code, absl::kZeroPad2),
                       " is not one of 0x01 (TDES2), 0x11 (AES128), 0x13 (AES256)"));
  }
}

namespace {
constexpr EnumName<KeyAlgorithm> kAlgorithmNames[] = {{KeyAlgorithm::kTdes2, "TDES2"},
                                                      {KeyAlgorithm::kAes128, "AES128"},
                                                      {KeyAlgorithm::kAes256, "AES256"}};
}  // namespace

std::string_view KeyAlgorithmName(KeyAlgorithm algorithm) {
  return NameOf(kAlgorithmNames, algorithm, "UNKNOWN");
}

absl::StatusOr<KeyAlgorithm> KeyAlgorithmFromName(std::string_view name) {
  if (auto a = ValueNamed(kAlgorithmNames, name)) return *a;
  // The name is caller-supplied configuration, never key material, so echoing it helps.
  return absl::InvalidArgumentError(absl::StrCat("key algorithm name \"",
                                                 std::string(name.substr(0, 32)),
                                                 "\" is not one of TDES2, AES128, AES256"));
}

size_t KeyLength(KeyAlgorithm algorithm) { return algorithm == KeyAlgorithm::kAes256 ? 32 : 16; }

CipherFamily FamilyOf(KeyAlgorithm algorithm) {
  return algorithm == KeyAlgorithm::kTdes2 ? CipherFamily::kTdes : CipherFamily::kAes;
}

size_t BlockSize(CipherFamily family) { return family == CipherFamily::kTdes ? 8 : 16; }

size_t BlockSize(KeyAlgorithm algorithm) { return BlockSize(FamilyOf(algorithm)); }

bool IsValidKeyLength(CipherFamily family, size_t key_length) {
  if (family == CipherFamily::kTdes) return key_length == 16 || key_length == 24;
  return key_length == 16 || key_length == 24 || key_length == 32;
}

}  // namespace rkl::crypto
