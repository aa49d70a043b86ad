#include "rkl/protocol/auth.h"

#include <openssl/crypto.h>

#include <algorithm>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kdf.h"

namespace rkl::protocol {
namespace {

using crypto::BlockMode;
using crypto::FamilyOf;

Bytes Concat(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  Bytes out(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

Bytes ZeroIv(const AuthKeys& keys) { return Bytes(crypto::BlockSize(keys.algorithm), 0); }

bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::Status CheckPair(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                       std::span<const uint8_t> rnd2) {
  RKL_RETURN_IF_ERROR(CheckNonce(keys.algorithm, rnd1, "rnd1"));
  return CheckNonce(keys.algorithm, rnd2, "rnd2");
}

// Checks that `token` (Crnd1 or Crnd2, named `field`) is two cipher blocks that decrypt under
// `key` (CBC, zero IV) to `expected`; UNAUTHENTICATED(`mismatch`) when they do not.
absl::Status VerifyToken(const AuthKeys& keys, const crypto::SecretBytes& key,
                         std::span<const uint8_t> expected, std::span<const uint8_t> token,
                         const char* field, const char* mismatch) {
  if (token.size() != 2 * crypto::BlockSize(keys.algorithm)) {
    return absl::InvalidArgumentError(std::string(field) + ": must be two cipher blocks");
  }
  RKL_ASSIGN_OR_RETURN(Bytes plain, crypto::Decrypt(FamilyOf(keys.algorithm), BlockMode::kCbc, key,
                                                    ZeroIv(keys), token));
  if (!ConstantTimeEqual(plain, expected)) return absl::UnauthenticatedError(mismatch);
  return absl::OkStatus();
}

Bytes ProofMessage(std::string_view sn, std::span<const uint8_t> kcv, std::span<const uint8_t> rnd1,
                   std::span<const uint8_t> rnd2) {
  // Sized once, then filled (appending with insert() draws a false -Warray-bounds from g++ 12).
  Bytes m(kInstalledLabel.size() + sn.size() + kcv.size() + rnd1.size() + rnd2.size());
  auto out = std::copy(kInstalledLabel.begin(), kInstalledLabel.end(), m.begin());
  out = std::copy(sn.begin(), sn.end(), out);
  out = std::copy(kcv.begin(), kcv.end(), out);
  out = std::copy(rnd1.begin(), rnd1.end(), out);
  std::copy(rnd2.begin(), rnd2.end(), out);
  return m;
}

}  // namespace

absl::StatusOr<AuthKeys> DeriveAuthKeys(crypto::KeyAlgorithm algorithm,
                                        const crypto::SecretBytes& auk, std::string_view sn) {
  if (auk.size() != crypto::KeyLength(algorithm)) {
    return absl::InvalidArgumentError("auk: wrong length for its algorithm");
  }
  size_t bits = auk.size() * 8;
  auto family = FamilyOf(algorithm);
  RKL_ASSIGN_OR_RETURN(auto k2p, crypto::KdfCounterCmac(family, auk, kAuthLabelK2p, sn, bits));
  RKL_ASSIGN_OR_RETURN(auto p2k, crypto::KdfCounterCmac(family, auk, kAuthLabelP2k, sn, bits));
  return AuthKeys{algorithm, std::move(k2p), std::move(p2k)};
}

absl::Status CheckNonce(crypto::KeyAlgorithm algorithm, std::span<const uint8_t> rnd,
                        std::string_view field) {
  size_t b = crypto::BlockSize(algorithm);
  if (rnd.size() != b) {
    return absl::InvalidArgumentError(
        std::string(field) + ": must be " + std::to_string(b) + " bytes for a " +
        std::string(crypto::KeyAlgorithmName(algorithm)) + " terminal");
  }
  return absl::OkStatus();
}

absl::StatusOr<Bytes> MakeCrnd1(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2) {
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  return crypto::Encrypt(FamilyOf(keys.algorithm), BlockMode::kCbc, keys.k2p, ZeroIv(keys),
                         Concat(rnd1, rnd2));
}

absl::StatusOr<Bytes> MakeCrnd2(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2) {
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  return crypto::Encrypt(FamilyOf(keys.algorithm), BlockMode::kCbc, keys.p2k, ZeroIv(keys),
                         Concat(rnd2, rnd1));
}

absl::Status VerifyCrnd2(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                         std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2) {
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  return VerifyToken(keys, keys.p2k, Concat(rnd2, rnd1), crnd2, "crnd2",
                     "authentication token does not verify");
}

absl::Status VerifyCrnd1(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                         std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd1) {
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  return VerifyToken(keys, keys.k2p, Concat(rnd1, rnd2), crnd1, "crnd1",
                     "KMS could not prove AUK: Crnd1 does not verify");
}

absl::StatusOr<Bytes> MakeInstallProof(const AuthKeys& keys, std::string_view sn,
                                       std::span<const uint8_t> tmk_kcv,
                                       std::span<const uint8_t> rnd1,
                                       std::span<const uint8_t> rnd2) {
  if (tmk_kcv.size() != 3) return absl::InvalidArgumentError("tmk_kcv: must be 3 bytes");
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  return crypto::Cmac(FamilyOf(keys.algorithm), keys.p2k, ProofMessage(sn, tmk_kcv, rnd1, rnd2));
}

absl::Status VerifyInstallProof(const AuthKeys& keys, std::string_view sn,
                                std::span<const uint8_t> tmk_kcv, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2, std::span<const uint8_t> proof) {
  if (tmk_kcv.size() != 3) return absl::InvalidArgumentError("tmk_kcv: must be 3 bytes");
  RKL_RETURN_IF_ERROR(CheckPair(keys, rnd1, rnd2));
  if (!crypto::CmacVerify(FamilyOf(keys.algorithm), keys.p2k, ProofMessage(sn, tmk_kcv, rnd1, rnd2),
                          proof)) {
    return absl::UnauthenticatedError("install proof does not verify");
  }
  return absl::OkStatus();
}

}  // namespace rkl::protocol
