#include "lmk.h"

#include "rkl/crypto/kcv.h"
#include "rkl/crypto/key_file.h"

namespace rkl::hsm {

absl::StatusOr<crypto::SecretBytes> LoadLmkFile(const std::string& path) {
  return crypto::LoadKeyFile(path, "lmk.file", "LMK file", kLmkSize);
}

absl::StatusOr<std::string> LmkKcv(const crypto::SecretBytes& lmk) {
  if (lmk.size() != kLmkSize) return absl::InvalidArgumentError("lmk: must be 32 bytes");
  return crypto::KcvHex(crypto::KeyAlgorithm::kAes256, lmk);
}

}  // namespace rkl::hsm
