#pragma once
// HsmPort: the narrow slice of HSM #2 (rkl.v1.Hsm) that rkl-kms uses. Callers hold key
// indexes and KCVs only; nothing crossing this interface is clear key material.
// Error codes follow PROTOCOL §10: UNAUTHENTICATED when a MAC or token does not verify,
// UNAVAILABLE / DEADLINE_EXCEEDED when HSM #2 cannot be reached (safe to retry).
// Implementations are thread-safe.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

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

// TR-34 (docs/kms.md "TR-34 terminals").
struct GeneratedKdhKey {
  uint64_t key_index = 0;
  Bytes public_key_der;  // SubjectPublicKeyInfo
};

struct KeyTokenOrder {
  std::string sn;
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
  Bytes krd_certificate_der;
  Bytes krd_nonce;
  uint64_t kdh_key_index = 0;
  Bytes kdh_certificate_der;
  std::vector<Bytes> crls;  // DER, the kdh-ca CRL
  bool replace_existing = false;
};

struct BuiltKeyToken {
  Bytes key_token;
  uint64_t tmk_index = 0;
  std::string tmk_kcv;
  bool created = false;  // false: the live TMK bound to this KRD went into the token
  std::string krd_id;
};

class HsmPort {
 public:
  virtual ~HsmPort() = default;

  // PROTOCOL §6 then §7 step 2, as one HSM command: verify M, unwrap, store TEK and AUK
  // bound to `sn` (the same Ctk_pk again returns the keys it made; a new one supersedes the
  // SN's live TEK, AUK and TMK), then answer `rnd1` with the imported AUK.
  virtual absl::StatusOr<ImportedAndChallenged> ImportAndChallenge(
      uint64_t pk_index, uint64_t mak_index, const std::string& sn, std::span<const uint8_t> ctk_pk,
      std::span<const uint8_t> rnd1) = 0;
  // PROTOCOL §7 step 4 then §8, as one HSM command: verify Crnd2, take the SN's TMK (the
  // live one unless `replace_existing`; a new one is bound to `tek_index`) and export it as
  // TR-31 under that TEK. Nothing is made or exported unless Crnd2 verifies.
  virtual absl::StatusOr<AuthenticatedDelivery> AuthenticateAndDeliver(
      uint64_t auk_index, const std::string& sn, std::span<const uint8_t> rnd1,
      std::span<const uint8_t> rnd2, std::span<const uint8_t> crnd2, crypto::KeyAlgorithm algorithm,
      bool replace_existing, uint64_t tek_index) = 0;
  // PROTOCOL §7 step 2, for a terminal whose TEK/AUK were imported before.
  virtual absl::StatusOr<AuthChallengeResult> AuthChallenge(uint64_t auk_index,
                                                            const std::string& sn,
                                                            std::span<const uint8_t> rnd1) = 0;
  // PROTOCOL §8 install proof.
  virtual absl::Status VerifyInstallProof(uint64_t auk_index, const std::string& sn,
                                          const std::string& tmk_kcv, std::span<const uint8_t> rnd1,
                                          std::span<const uint8_t> rnd2,
                                          std::span<const uint8_t> proof) = 0;
  // Revocation: destroys every key of `sn` in HSM #2 (TEK, AUK, TMK, live or superseded);
  // returns the indexes destroyed now (none when a previous call destroyed them).
  virtual absl::StatusOr<std::vector<uint64_t>> DestroyTerminalKeys(const std::string& sn,
                                                                    const std::string& reason) = 0;

  // TR-34: Hsm.GenerateKdhKey (KEY_USAGE_KDH_SIGN, `bits` 2048 or 3072).
  virtual absl::StatusOr<GeneratedKdhKey> GenerateKdhKey(uint32_t bits,
                                                         const std::string& label) = 0;
  // TR-34: Hsm.BuildKeyToken, a two-pass key token for one KRD (hsm.proto).
  virtual absl::StatusOr<BuiltKeyToken> BuildKeyToken(const KeyTokenOrder& order) = 0;
  // TR-34: Hsm.VerifyKeyTokenInstallProof; UNAUTHENTICATED when the proof does not verify.
  virtual absl::Status VerifyKeyTokenInstallProof(uint64_t tmk_index, const std::string& sn,
                                                  std::span<const uint8_t> krd_nonce,
                                                  std::span<const uint8_t> proof) = 0;
};

// True for the codes after which the same HSM call may simply be repeated.
inline bool IsRetryableHsmError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace rkl::kms
