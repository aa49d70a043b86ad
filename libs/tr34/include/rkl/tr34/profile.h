#pragma once
// rkl's profile of TR-34 (docs/tr34.md): what rkl fixes where the standard leaves a choice,
// shared by the KDH side (HSM #2, KMS) and the KRD side (rkl-pos), so both sides compute
// the same bytes.
//  - A KRD certificate names its terminal: subject CN = the SN (PROTOCOL §1 syntax).
//  - A KRD is known by its id: SHA-256 of its certificate's DER IssuerAndSerialNumber, as 64
//    upper-case hex digits (KeyInfo.bound_krd, Terminal.krd_id).
//  - The key block header of a TMK is the TR-31 header of PROTOCOL §8 with no optional
//    blocks: version 'D' (AES) or 'B' (TDES), length "0016", usage "K0", algorithm 'A' or
//    'T', mode 'D', key version "00", exportability 'N', "00" optional blocks, "00".
//  - TR-34 defines no confirmation; an rkl KRD proves it installed the TMK with
//    InstallProof = CMAC(TMK, "RKL-TR34-INSTALLED" ‖ SN ‖ KCV(TMK) ‖ nonce), nonce = the
//    random number of the token it accepted.
// Stateless; thread-safe.

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/tr34/tokens.h"

namespace rkl::tr34 {

// 64 upper-case hex digits.
std::string KrdIdOf(const CertId& id);

// The SN a KRD certificate names: its subject CN, checked with protocol::ValidateSn.
// INVALID_ARGUMENT "krd certificate: ..." when the CN is not an SN.
absl::StatusOr<std::string> SnOfKrdCertificate(const crypto::Certificate& krd_cert);

// The header of a TMK of `algorithm` (AES128, AES256 or TDES2); INVALID_ARGUMENT otherwise.
absl::StatusOr<std::string> TmkHeader(crypto::KeyAlgorithm algorithm);

// CMAC(TMK, "RKL-TR34-INSTALLED" ‖ SN ‖ KCV(TMK) ‖ nonce) under the TMK's algorithm.
absl::StatusOr<Bytes> InstallProof(crypto::KeyAlgorithm algorithm, const crypto::SecretBytes& tmk,
                                   std::string_view sn, std::span<const uint8_t> nonce);
// Constant-time check of a proof; false for any mismatch or error.
bool VerifyInstallProof(crypto::KeyAlgorithm algorithm, const crypto::SecretBytes& tmk,
                        std::string_view sn, std::span<const uint8_t> nonce,
                        std::span<const uint8_t> proof);

}  // namespace rkl::tr34
