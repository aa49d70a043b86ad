#pragma once
// Mutual authentication with AUK, reflection-safe (PROTOCOL §7), and the install proof (§8).
// Both directions use their own key derived from AUK and bind both nonces, so an answer
// KMS produced can never be replayed to KMS as the terminal's answer:
//   K_k2p = KDF(AUK, "RKL-AUTH-K2P", SN, bits(AUK))   (KMS → POS)
//   K_p2k = KDF(AUK, "RKL-AUTH-P2K", SN, bits(AUK))   (POS → KMS)
//   Crnd1 = E(K_k2p, Rnd1 ‖ Rnd2), Crnd2 = E(K_p2k, Rnd2 ‖ Rnd1), CBC, zero IV, no padding
//   proof = CMAC(K_p2k, "RKL-INSTALLED" ‖ SN ‖ KCV(TMK) ‖ Rnd1 ‖ Rnd2)
// Used by the HSM (one side) and by terminals (the other). Comparisons are constant time.

#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::protocol {

inline constexpr std::string_view kAuthLabelK2p = "RKL-AUTH-K2P";
inline constexpr std::string_view kAuthLabelP2k = "RKL-AUTH-P2K";
inline constexpr std::string_view kInstalledLabel = "RKL-INSTALLED";

struct AuthKeys {
  crypto::KeyAlgorithm algorithm;
  crypto::SecretBytes k2p;
  crypto::SecretBytes p2k;
};

absl::StatusOr<AuthKeys> DeriveAuthKeys(crypto::KeyAlgorithm algorithm,
                                        const crypto::SecretBytes& auk, std::string_view sn);

// INVALID_ARGUMENT unless rnd is exactly one block of the algorithm.
absl::Status CheckNonce(crypto::KeyAlgorithm algorithm, std::span<const uint8_t> rnd,
                        std::string_view field);

// KMS side (inside the HSM).
absl::StatusOr<Bytes> MakeCrnd1(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2);
// UNAUTHENTICATED "authentication token does not verify" when Crnd2 is wrong.
absl::Status VerifyCrnd2(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                         std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2);

// Terminal side.
// UNAUTHENTICATED "KMS could not prove AUK" when Crnd1 is wrong.
absl::Status VerifyCrnd1(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                         std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd1);
absl::StatusOr<Bytes> MakeCrnd2(const AuthKeys& keys, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2);

// Install proof (§8). tmk_kcv is the 3-byte KCV.
absl::StatusOr<Bytes> MakeInstallProof(const AuthKeys& keys, std::string_view sn,
                                       std::span<const uint8_t> tmk_kcv,
                                       std::span<const uint8_t> rnd1,
                                       std::span<const uint8_t> rnd2);
absl::Status VerifyInstallProof(const AuthKeys& keys, std::string_view sn,
                                std::span<const uint8_t> tmk_kcv, std::span<const uint8_t> rnd1,
                                std::span<const uint8_t> rnd2, std::span<const uint8_t> proof);

}  // namespace rkl::protocol
