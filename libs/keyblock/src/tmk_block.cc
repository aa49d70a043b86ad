#include "rkl/keyblock/tmk_block.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"

namespace rkl::keyblock {
namespace {

using crypto::CipherFamily;
using crypto::KeyAlgorithm;
using crypto::SecretBytes;

constexpr char kUsage[] = "K0";
constexpr char kModeOfUse = 'D';
constexpr char kKeyVersion[] = "00";
constexpr char kExportability = 'N';

absl::Status Profile(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("TMK block: ", std::string(what)));
}

std::string Name(KeyAlgorithm a) { return std::string(crypto::KeyAlgorithmName(a)); }

absl::Status CheckKeyLength(const SecretBytes& key, KeyAlgorithm algorithm, const char* role) {
  if (key.size() == crypto::KeyLength(algorithm)) return absl::OkStatus();
  return Profile(absl::StrCat(role, " must be ", crypto::KeyLength(algorithm), " bytes for ",
                              Name(algorithm), ", got ", key.size()));
}

KeyBlockVersion VersionFor(KeyAlgorithm kbpk_algorithm) {
  return crypto::FamilyOf(kbpk_algorithm) == CipherFamily::kTdes ? KeyBlockVersion::kB
                                                                 : KeyBlockVersion::kD;
}

char AlgorithmLetter(KeyAlgorithm algorithm) {
  return crypto::FamilyOf(algorithm) == CipherFamily::kTdes ? 'T' : 'A';
}

// KC/KP data: KCV method ("00" legacy encrypt-zeros for TDES, "01" CMAC for AES) ‖ KCV.
absl::StatusOr<std::string> KcvBlockData(const SecretBytes& key, KeyAlgorithm algorithm) {
  RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(algorithm, key));
  return (crypto::FamilyOf(algorithm) == CipherFamily::kTdes ? "00" : "01") + kcv;
}

}  // namespace

absl::StatusOr<KeyBlockHeader> TmkBlockHeader(const SecretBytes& tek, KeyAlgorithm tek_algorithm,
                                              const SecretBytes& tmk, KeyAlgorithm tmk_algorithm) {
  RKL_RETURN_IF_ERROR(CheckKeyLength(tek, tek_algorithm, "TEK"));
  RKL_RETURN_IF_ERROR(CheckKeyLength(tmk, tmk_algorithm, "TMK"));
  KeyBlockHeader h;
  h.version = VersionFor(tek_algorithm);
  h.key_usage = kUsage;
  h.algorithm = AlgorithmLetter(tmk_algorithm);
  h.mode_of_use = kModeOfUse;
  h.key_version = kKeyVersion;
  h.exportability = kExportability;
  RKL_ASSIGN_OR_RETURN(std::string kc, KcvBlockData(tmk, tmk_algorithm));
  RKL_ASSIGN_OR_RETURN(std::string kp, KcvBlockData(tek, tek_algorithm));
  h.optional_blocks = {{"KC", kc}, {"KP", kp}};
  return h;
}

absl::StatusOr<std::string> BuildTmkBlock(const SecretBytes& tek, KeyAlgorithm tek_algorithm,
                                          const SecretBytes& tmk, KeyAlgorithm tmk_algorithm,
                                          const crypto::RandomSource& padding) {
  RKL_ASSIGN_OR_RETURN(KeyBlockHeader header,
                       TmkBlockHeader(tek, tek_algorithm, tmk, tmk_algorithm));
  return Build(tek, header, tmk, padding);
}

absl::StatusOr<TmkDelivery> ParseTmkBlock(const SecretBytes& tek, KeyAlgorithm tek_algorithm,
                                          std::string_view block) {
  RKL_RETURN_IF_ERROR(CheckKeyLength(tek, tek_algorithm, "TEK"));
  const KeyBlockVersion want_version = VersionFor(tek_algorithm);
  if (block.empty() || block[0] != static_cast<char>(want_version)) {
    return Profile(absl::StrCat("a ", Name(tek_algorithm), " TEK requires key block version '",
                                std::string(1, static_cast<char>(want_version)), "'"));
  }
  RKL_ASSIGN_OR_RETURN(ParsedKeyBlock parsed, Parse(tek, block));
  const KeyBlockHeader& h = parsed.header;

  if (h.key_usage != kUsage) return Profile("key usage must be \"K0\"");
  if (h.mode_of_use != kModeOfUse) return Profile("mode of use must be 'D'");
  if (h.key_version != kKeyVersion) return Profile("key version number must be \"00\"");
  if (h.exportability != kExportability) return Profile("exportability must be 'N'");

  KeyAlgorithm tmk_algorithm;
  if (h.algorithm == 'T' && parsed.key.size() == 16) {
    tmk_algorithm = KeyAlgorithm::kTdes2;
  } else if (h.algorithm == 'A' && parsed.key.size() == 16) {
    tmk_algorithm = KeyAlgorithm::kAes128;
  } else if (h.algorithm == 'A' && parsed.key.size() == 32) {
    tmk_algorithm = KeyAlgorithm::kAes256;
  } else {
    return Profile(absl::StrCat("algorithm '", std::string(1, h.algorithm), "' with a ",
                                parsed.key.size(),
                                "-byte key is not a TMK algorithm (TDES2, AES128, AES256)"));
  }

  const auto& blocks = h.optional_blocks;
  const bool shape_ok = (blocks.size() == 2 || (blocks.size() == 3 && blocks[2].id == "PB")) &&
                        blocks[0].id == "KC" && blocks[1].id == "KP";
  if (!shape_ok) {
    return Profile("optional blocks must be KC, KP and optionally PB, in that order");
  }
  RKL_ASSIGN_OR_RETURN(std::string want_kc, KcvBlockData(parsed.key, tmk_algorithm));
  if (blocks[0].data != want_kc) {
    return Profile("KC block does not match the check value of the delivered key");
  }
  RKL_ASSIGN_OR_RETURN(std::string want_kp, KcvBlockData(tek, tek_algorithm));
  if (blocks[1].data != want_kp) {
    return Profile("KP block does not match the check value of the TEK");
  }

  TmkDelivery out{std::move(parsed.key), tmk_algorithm, want_kc.substr(2)};
  return out;
}

}  // namespace rkl::keyblock
