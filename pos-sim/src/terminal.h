#pragma once
// The POS terminal of the patent, around its secure module: manufacture (SN + burned-in
// HsmRCRT), S204–S206 (verify HsmWCRT, keep Pu), S102–S103 (TK = TEK ‖ AUK, Ctk_Pu),
// S109–S113 with S401–S405 (mutual authentication with AUK, TR-31 TMK delivery, install
// proof). Or, manufactured for TR-34, a KRD (tr34_terminal.cc): device key pair and KRD
// certificate, burned-in kdh-ca, two-pass key token from KMS (docs/pos-sim.md).
//
// Guarantees:
//  - every terminal-side check is made before the secure module changes, and a refused
//    step leaves the state file byte-identical (SecureModule::Commit is the only writer);
//  - the work certificate is accepted only if it chains to the burned-in HsmRCRT (never the
//    system trust store), is within validity now, has exactly keyUsage keyEncipherment,
//    critical, is not a CA, and holds an RSA key of at least 2048 bits (PROTOCOL §2);
//  - KMS must prove AUK (Crnd1) before the terminal answers, and the key block must pass
//    MAC, header profile, KC/KP checks and carry a TMK of the terminal's own algorithm;
//  - errors name the field and the rule and never carry key bytes or which internal check
//    of a decryption failed.
// Not thread-safe: one Terminal per thread (a fleet gives each worker its own terminals).

#include <functional>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krd_ca.h"
#include "ports.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/x509.h"
#include "rkl/tr34/tokens.h"
#include "secure_module.h"

namespace rkl::pos {

using Sleeper = std::function<void(absl::Duration)>;

// How long download-tmk waits for MTMS to forward the TK to KMS, how long it asks KMS to
// wait for it in each BeginAuthentication call (wait_ms: KMS answers as soon as the TK
// arrives, NOT_FOUND when it did not in time), and how it backs off between calls answered
// NOT_FOUND (a KMS that does not wait) or UNAVAILABLE.
struct ForwardingWait {
  absl::Duration timeout = absl::Seconds(60);
  absl::Duration begin_wait = absl::Seconds(20);
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
};

// DownloadTmk's DEADLINE_EXCEEDED message when KMS never learned the terminal in time.
inline constexpr char kForwardingTimeoutMessagePrefix[] = "kms: terminal not known to KMS";

// ConfirmInstallation calls with one proof at most, when no answer says how the previous
// one ended (UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, ABORTED).
inline constexpr int kConfirmAttempts = 3;

struct DownloadResult {
  std::string tmk_kcv;
  std::string kms_state;                 // as KMS reported after confirmation
  absl::Duration waited_for_forwarding;  // time until KMS knew the TK (its waits, retries)
  int begin_attempts = 0;                // BeginAuthentication calls
  int confirm_attempts = 0;
};

// TR-34 manufacture: what the factory burns in and certifies the device key with.
struct KrdFactory {
  const crypto::Certificate* kdh_ca = nullptr;  // the only KDH trust anchor
  const KrdCa* krd_ca = nullptr;                // the KRD CA card, unlocked
};

// TR-34: the size of the KRD's random number (RT_KRD).
inline constexpr size_t kKrdNonceSize = 16;

// What a TR-34 terminal sends with RequestKeyToken.
struct KeyTokenRequestParts {
  Bytes ct_krd;
  Bytes rt_krd;
};

// Public data the terminal hands to the operator terminal for S104.
struct TransportKeyOffer {
  std::string sn;
  Bytes ctk_pu;
  std::string work_certificate_serial;
  crypto::KeyAlgorithm algorithm;
};

class Terminal {
 public:
  // Creates the terminal's secure module with `sn`, `algorithm` and HsmRCRT burned in.
  // The root must be a self-signed CA certificate.
  static absl::StatusOr<Terminal> Manufacture(const std::string& state_dir, const std::string& sn,
                                              crypto::KeyAlgorithm algorithm,
                                              const crypto::Certificate& terminal_root,
                                              Clock clock);
  // TR-34: creates the secure module with `sn`, `algorithm` (of the TMK it will ask for) and
  // the kdh-ca certificate burned in; the module makes an RSA-2048 device key pair, and the
  // factory certifies its public key with the KRD CA (krd_ca.h).
  static absl::StatusOr<Terminal> ManufactureTr34(const std::string& state_dir,
                                                  const std::string& sn,
                                                  crypto::KeyAlgorithm algorithm,
                                                  const KrdFactory& factory, Clock clock);
  static absl::StatusOr<Terminal> Load(const std::string& state_dir, const std::string& sn,
                                       Clock clock);

  Terminal(Terminal&&) noexcept = default;
  Terminal& operator=(Terminal&&) noexcept = default;

  // S205–S206: verifies `work_certificate` against the burned-in HsmRCRT and keeps it (Pu).
  absl::Status InstallWorkCertificate(const crypto::Certificate& work_certificate);
  // Same, from PEM as MTMS returns it.
  absl::Status InstallWorkCertificatePem(const std::string& work_certificate_pem);

  // S102–S103: fresh TEK and AUK, Ctk_Pu = RSA-OAEP(Pu, payload, "RKL-TK:" ‖ SN).
  absl::Status GenerateTransportKey();

  // What the operator terminal signs and sends (requires a generated TK).
  absl::StatusOr<TransportKeyOffer> OfferTransportKey() const;
  // Records MTMS's receipt once the operator terminal submitted the package.
  absl::Status MarkSubmitted(const std::string& submission_id);

  // S109–S113, S401–S405 against KMS, waiting for the TK to be forwarded first. From
  // TMK_LOADED (a confirmation whose answer never came) it authenticates again, accepts only
  // the TMK it holds, and confirms it (KMS answers INSTALLED also if it had accepted the first
  // proof). A confirmation without an answer is repeated (kConfirmAttempts, backing off as
  // the forwarding wait does); if none answers, the terminal stays TMK_LOADED.
  absl::StatusOr<DownloadResult> DownloadTmk(KmsTerminalPort& kms, const ForwardingWait& wait,
                                             const Sleeper& sleep);

  // ---- TR-34 two-pass (protocol tr34; FAILED_PRECONDITION for a patent terminal) ----
  // The whole exchange with KMS: CT_KDH (BindKdh), RT_KRD (PrepareKeyTokenRequest), the key
  // token (AcceptKeyToken), and ConfirmKeyToken with the install proof, repeated like
  // ConfirmInstallation when no answer says how it ended. From TMK_LOADED it first sends the
  // proof of the TMK it holds again (KMS answers INSTALLED to a repeat of an accepted proof);
  // only if KMS refuses that proof does it ask for a token again, and it accepts only the TMK
  // it holds.
  absl::StatusOr<DownloadResult> LoadTmkTr34(KmsTr34Port& kms, const ForwardingWait& wait,
                                             const Sleeper& sleep);
  // CT_KRD: the KRD certificate as a credential token.
  absl::StatusOr<Bytes> KrdCredentialToken() const;
  // Checks CT_KDH: its KDH certificate is a KDH's under the burned-in kdh-ca
  // (tr34::CheckRole) and a current kdh-ca CRL in it does not list it; then binds the
  // terminal to it. A terminal bound to another KDH refuses (rebind is not supported).
  absl::Status BindKdh(const Bytes& ct_kdh);
  // A fresh random number, committed as pending BEFORE it is returned in RT_KRD.
  absl::StatusOr<KeyTokenRequestParts> PrepareKeyTokenRequest();
  // The KRD's check of a two-pass key token against the pending random number, the bound
  // KDH, the token's CRLs, the TMK header and length of the terminal's algorithm and the KCV
  // KMS sent; only then the TMK is stored (TMK_LOADED) and the pending random number cleared.
  absl::Status AcceptKeyToken(const Bytes& key_token, const std::string& tmk_kcv);

  const SecureModule& secure_module() const { return module_; }
  SecureModuleDescription Describe() const { return module_.Describe(); }

 private:
  Terminal(SecureModule module, Clock clock)
      : module_(std::move(module)), clock_(std::move(clock)) {}
  int64_t NowUnixMs() const;

  SecureModule module_;
  Clock clock_;
};

// The PROTOCOL §2 acceptance rules for a work certificate, exposed for tests and for the
// operator terminal's early warning. `at_unix_seconds` is the terminal's time.
absl::Status CheckWorkCertificate(const crypto::Certificate& work_certificate,
                                  const crypto::Certificate& terminal_root,
                                  int64_t at_unix_seconds);

// The KRD's receive path for a two-pass key token (Terminal::AcceptKeyToken without the
// secure module): tr34::ReceiveTwoPassKeyToken under `kdh` with `nonce`, then
// `check_crls` on the token's CRLs (the KDH not revoked), the key block header ==
// tr34::TmkHeader(algorithm), the TMK length of `algorithm`, and KCV(TMK) == `tmk_kcv`.
// Every refusal is "key_token: refused, secure module unchanged: <rule>".
absl::StatusOr<crypto::SecretBytes> ReceiveTmkFromKeyToken(
    std::span<const uint8_t> key_token, const tr34::PeerKey& kdh, std::span<const uint8_t> nonce,
    const tr34::CertId& own_id, const crypto::PrivateKey& own_key, crypto::KeyAlgorithm algorithm,
    const std::string& tmk_kcv,
    const std::function<absl::Status(std::span<const Bytes> crls)>& check_crls);

// Sleeps the calling thread (production Sleeper).
void SleepFor(absl::Duration d);

}  // namespace rkl::pos
