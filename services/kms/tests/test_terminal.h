#pragma once
// TestTerminal: a payment terminal's secure module written for the KMS tests from
// PROTOCOL.md alone (no pos-sim code), on rkl::crypto / rkl::protocol / rkl::keyblock:
//  - S102: TK = TEK ‖ AUK of the terminal's algorithm;
//  - S106 stand-in: builds Ctk_pk (§5) under known PK/MAK, as HSM #1 would;
//  - §7 from the terminal's side: Rnd1, checks Crnd1 (refuses a KMS that cannot prove AUK),
//    answers Crnd2;
//  - §8: takes the TR-31 block apart and checks every header field, KC and KP, against
//    values it computes itself, then the install proof.
// Test-only; keeps its keys in SecretBytes. Not thread-safe (one terminal, one thread).

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::kms::testing {

class TestTerminal {
 public:
  TestTerminal(std::string sn, crypto::KeyAlgorithm algorithm);

  const std::string& sn() const { return sn_; }
  crypto::KeyAlgorithm algorithm() const { return algorithm_; }

  // Ctk_pk = H ‖ [len(W)]_2 ‖ W ‖ M under `pk`/`mak` (AES-256). created_at defaults to the
  // current TK's: 1700000000000 for the first, one second later for each new TK.
  absl::StatusOr<Bytes> MakeCtkPk(const crypto::SecretBytes& pk, const crypto::SecretBytes& mak,
                                  std::optional<int64_t> created_at_ms = std::nullopt) const;
  int64_t tk_created_at_ms() const { return tk_created_at_ms_; }
  // Replaces TEK/AUK with fresh ones (a new TK, as for a re-key), in a package made one
  // second after the previous one.
  void RegenerateTransportKey();

  // §7 step 1: a fresh Rnd1 (one cipher block).
  Bytes NewRnd1();
  // §7 step 3: UNAUTHENTICATED unless Crnd1 = E(K_k2p, Rnd1 ‖ Rnd2); then Crnd2.
  absl::StatusOr<Bytes> AnswerChallenge(std::span<const uint8_t> crnd1,
                                        std::span<const uint8_t> rnd2);
  // §8: verifies the key block completely and stores the TMK. `kcv` is the KCV KMS sent.
  absl::Status AcceptKeyBlock(const std::string& key_block, const std::string& kcv);
  // §8: CMAC(K_p2k, "RKL-INSTALLED" ‖ SN ‖ KCV(TMK) ‖ Rnd1 ‖ Rnd2).
  absl::StatusOr<Bytes> InstallProof() const;

  bool has_tmk() const { return !tmk_.empty(); }
  const std::string& tmk_kcv() const { return tmk_kcv_; }
  // The untruncated check value (full CMAC / TDES-ECB of zeros): tells TMKs apart with no
  // 24-bit collisions, and is not key material.
  absl::StatusOr<Bytes> TmkFingerprint() const;
  // Hex of TEK, AUK and TMK, so tests can prove none of them appears in any record,
  // message or log the KMS produces.
  std::vector<std::string> SecretHexForLeakChecks() const;

 private:
  std::string sn_;
  crypto::KeyAlgorithm algorithm_;
  int64_t tk_created_at_ms_ = 1700000000000;
  bool tek_created_at_ms_set_ = false;
  crypto::SecretBytes tek_;
  crypto::SecretBytes auk_;
  Bytes rnd1_;
  Bytes rnd2_;
  crypto::SecretBytes tmk_;
  std::string tmk_kcv_;
};

}  // namespace rkl::kms::testing
