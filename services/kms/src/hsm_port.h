#pragma once
// HsmPort: the narrow slice of HSM #2 (rkl.v1.Hsm) that rkl-kms uses. Callers hold key
// indexes and KCVs only; nothing crossing this interface is clear key material.
// Error codes follow PROTOCOL §10: UNAUTHENTICATED when a MAC or token does not verify,
// UNAVAILABLE / DEADLINE_EXCEEDED when HSM #2 cannot be reached (safe to retry).
// Implementations are thread-safe.

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::kms {

struct ImportedTransportKey {
  uint64_t tek_index = 0;
  std::string tek_kcv;
  uint64_t auk_index = 0;
  std::string auk_kcv;
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
};

struct AuthChallengeResult {
  Bytes rnd2;
  Bytes crnd1;
};

struct GeneratedTmk {
  uint64_t tmk_index = 0;
  std::string kcv;
  bool created = false;  // false: the existing live TMK was returned
};

struct ExportedKeyBlock {
  std::string key_block;
  std::string key_kcv;
  std::string kek_kcv;
};

struct ImportedAndChallenged {
  ImportedTransportKey imported;
  AuthChallengeResult challenge;
};

struct AuthenticatedDelivery {
  GeneratedTmk tmk;
  ExportedKeyBlock block;
};

class HsmPort {
 public:
  virtual ~HsmPort() = default;

  // Composite commands: what the named calls do in sequence, as one HSM command (one round
  // trip, one HSM transaction). The defaults make the separate calls (for fakes).
  // ImportTransportKey, then AuthChallenge with the imported AUK.
  virtual absl::StatusOr<ImportedAndChallenged> ImportAndChallenge(
      uint64_t pk_index, uint64_t mak_index, const std::string& sn,
      std::span<const uint8_t> ctk_pk, std::span<const uint8_t> rnd1) {
    auto imported = ImportTransportKey(pk_index, mak_index, sn, ctk_pk);
    if (!imported.ok()) return imported.status();
    auto challenge = AuthChallenge(imported->auk_index, sn, rnd1);
    if (!challenge.ok()) return challenge.status();
    return ImportedAndChallenged{*std::move(imported), *std::move(challenge)};
  }
  // AuthVerify, then GenerateTmk, then ExportKeyBlock of that TMK under `tek_index`.
  virtual absl::StatusOr<AuthenticatedDelivery> AuthenticateAndDeliver(
      uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
      std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2,
      crypto::KeyAlgorithm algorithm, bool replace_existing, uint64_t tek_index) {
    if (absl::Status s = AuthVerify(auk_index, sn, rnd1, rnd2, crnd2); !s.ok()) return s;
    auto tmk = GenerateTmk(sn, algorithm, replace_existing);
    if (!tmk.ok()) return tmk.status();
    auto block = ExportKeyBlock(tmk->tmk_index, tek_index, sn);
    if (!block.ok()) return block.status();
    return AuthenticatedDelivery{*std::move(tmk), *std::move(block)};
  }

  // PROTOCOL §6: verify M, unwrap, store TEK and AUK bound to `sn`.
  virtual absl::StatusOr<ImportedTransportKey> ImportTransportKey(
      uint64_t pk_index, uint64_t mak_index, const std::string& sn,
      std::span<const uint8_t> ctk_pk) = 0;
  // One live TMK per SN; with replace_existing the live one is superseded.
  virtual absl::StatusOr<GeneratedTmk> GenerateTmk(const std::string& sn,
                                                   crypto::KeyAlgorithm algorithm,
                                                   bool replace_existing) = 0;
  // PROTOCOL §7 step 2.
  virtual absl::StatusOr<AuthChallengeResult> AuthChallenge(uint64_t auk_index,
                                                            const std::string& sn,
                                                            std::span<const uint8_t> rnd1) = 0;
  // PROTOCOL §7 step 4.
  virtual absl::Status AuthVerify(uint64_t auk_index, const std::string& sn,
                                  std::span<const uint8_t> rnd1, std::span<const uint8_t> rnd2,
                                  std::span<const uint8_t> crnd2) = 0;
  // PROTOCOL §8: the key under the KEK as a TR-31 block.
  virtual absl::StatusOr<ExportedKeyBlock> ExportKeyBlock(uint64_t key_index, uint64_t kek_index,
                                                          const std::string& sn) = 0;
  // PROTOCOL §8 install proof.
  virtual absl::Status VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                          const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                          std::span<const uint8_t> rnd2,
                                          std::span<const uint8_t> proof) = 0;
};

// True for the codes after which the same HSM call may simply be repeated.
inline bool IsRetryableHsmError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace rkl::kms
