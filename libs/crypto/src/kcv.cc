#include "rkl/crypto/kcv.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"

namespace rkl::crypto {

absl::StatusOr<Bytes> Kcv(CipherFamily family, const SecretBytes& key) {
  Bytes full;
  if (family == CipherFamily::kTdes) {
    const Bytes zeros(8, 0);
    RKL_ASSIGN_OR_RETURN(full, Encrypt(family, BlockMode::kEcb, key, {}, zeros));
  } else {
    const Bytes zeros(16, 0);
    RKL_ASSIGN_OR_RETURN(full, Cmac(family, key, zeros));
  }
  full.resize(kKcvSize);
  return full;
}

absl::StatusOr<std::string> KcvHex(CipherFamily family, const SecretBytes& key) {
  RKL_ASSIGN_OR_RETURN(Bytes kcv, Kcv(family, key));
  return ToHex(kcv);
}

absl::StatusOr<Bytes> Kcv(KeyAlgorithm algorithm, const SecretBytes& key) {
  if (key.size() != KeyLength(algorithm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KCV: ", std::string(KeyAlgorithmName(algorithm)), " key must be ",
                     KeyLength(algorithm), " bytes, got ", key.size()));
  }
  return Kcv(FamilyOf(algorithm), key);
}

absl::StatusOr<std::string> KcvHex(KeyAlgorithm algorithm, const SecretBytes& key) {
  RKL_ASSIGN_OR_RETURN(Bytes kcv, Kcv(algorithm, key));
  return ToHex(kcv);
}

}  // namespace rkl::crypto
