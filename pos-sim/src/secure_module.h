#pragma once
// The simulated secure module of one POS terminal: the only place a terminal's clear keys
// (TEK, AUK, TMK; for a TR-34 terminal the TMK and the KRD's RSA private key) exist outside
// HSM #2.
//
// On disk, a terminal is a directory <state-dir>/<SN>/ (mode 0700) holding
//   device.key             32 random bytes, mode 0600: stands for the hardware-unique key a
//                          real secure element never exports;
//   secure_module.sealed   mode 0600: the state sealed under the device key with AAD = SN
//                          (crypto::SealingKey, seal.h: AES-256-GCM, nonce ‖ ciphertext ‖ tag).
// The state (SN, algorithm, protocol, lifecycle, burned-in HsmRCRT, accepted HsmWCRT, TEK,
// AUK, Ctk_Pu, MTMS receipt, TMK; TR-34: burned-in kdh-ca certificate, KRD certificate and
// private key, bound KDH certificate, pending and accepted random numbers) is serialised into a
// SecretBytes buffer and sealed as a whole, so no clear key is ever written anywhere, and a state
// file copied to another SN or device does not open.
//
// Guarantees:
//  - every mutation is all-or-nothing: Commit() seals the complete next state, writes it to
//    a fresh temporary file, fsyncs it and renames it over the old one; a step that fails
//    before Commit() leaves the file byte-identical;
//  - keys leave the module only as SecretBytes handed to the terminal's own crypto
//    (terminal.cc); what the module shows to the world (Describe()) is KCVs and states only;
//  - SecureModuleTestPeer (defined only in the test target) is the one test hook that reads
//    the clear keys, so tests can prove they never appear in files or output.
// Thread safety: one SecureModule per terminal, used by one thread at a time. Two processes
// must not mutate the same terminal concurrently (the last rename wins).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/seal.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::pos {

// Where a terminal is in the patent's flow. Values are stored in the state file.
enum class Lifecycle : uint8_t {
  kManufactured = 1,   // SN and HsmRCRT burned in
  kCertInstalled = 2,  // S206: HsmWCRT verified, Pu kept
  kTkGenerated = 3,    // S102–S103: TEK, AUK and Ctk_Pu made
  kTkSubmitted = 4,    // S104–S105: the operator terminal sent the package to MTMS
  kTmkLoaded = 5,      // S113: TMK verified and stored, confirmation not yet accepted
  kInstalled = 6,      // S113: KMS accepted the install proof
  // TR-34 (two-pass) only: MANUFACTURED -> KDH_BOUND -> TOKEN_REQUESTED -> TMK_LOADED ->
  // INSTALLED.
  kKdhBound = 7,        // CT_KDH accepted: the KDH certificate is bound
  kTokenRequested = 8,  // RT_KRD sent: a random number is pending
};
std::string_view LifecycleName(Lifecycle lifecycle);

// How the terminal loads its TMK: the patent's flow or TR-34 two-pass. Stored in the state;
// fixed at manufacture.
enum class Protocol : uint8_t { kPatent = 1, kTr34 = 2 };
std::string_view ProtocolName(Protocol protocol);  // "patent", "tr34"
absl::StatusOr<Protocol> ProtocolFromName(std::string_view name);

// The complete contents of the module. Copyable, so a step builds the next state on a copy
// and commits it only when every check passed.
struct SecureModuleState {
  std::string sn;
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
  Lifecycle lifecycle = Lifecycle::kManufactured;
  Bytes terminal_root_der;     // HsmRCRT, burned in at manufacture
  Bytes work_certificate_der;  // HsmWCRT, once verified (holds Pu)
  crypto::SecretBytes tek;     // empty until generate-tk
  crypto::SecretBytes auk;
  Bytes ctk_pu;               // public: RSA-OAEP ciphertext of the TK payload
  std::string submission_id;  // MTMS receipt
  crypto::SecretBytes tmk;    // empty until download-tmk
  int64_t manufactured_at_unix_ms = 0;
  int64_t installed_at_unix_ms = 0;
  // TR-34 (protocol kTr34); empty for a patent terminal.
  Protocol protocol = Protocol::kPatent;
  Bytes kdh_ca_der;                     // burned in: the only KDH trust anchor
  Bytes krd_certificate_der;            // the device certificate (CN = SN), from the KRD CA
  crypto::SecretBytes krd_private_key;  // PKCS#8 DER of the RSA-2048 device key
  Bytes kdh_certificate_der;            // the bound KDH, once CT_KDH was accepted
  Bytes pending_nonce;                  // RT_KRD's random number while a token is awaited
  Bytes accepted_nonce;                 // the random number of the token whose TMK is held
};

// What may be shown about a terminal: no key material, only check values and states.
struct SecureModuleDescription {
  std::string sn;
  std::string lifecycle;
  std::string algorithm;
  std::string tek_kcv;  // 6 hex digits, empty when absent
  std::string auk_kcv;
  std::string tmk_kcv;
  std::string work_certificate_serial;  // upper-case hex, empty when absent
  std::string submission_id;
  std::string protocol;   // "patent" or "tr34"
  std::string krd_id;     // TR-34: tr34::KrdIdOf the KRD certificate
  std::string kdh_bound;  // TR-34: subject CN and serial of the bound KDH, empty when none
};

// A certificate parsed from DER and kept for as long as the DER it came from is unchanged.
// Parsing is the costly part of using a certificate: OpenSSL 3 decodes its public key
// through the provider decoder registry, under a process-wide lock. Every step of a
// terminal (generate-tk, submit, describe, install) uses the HsmWCRT or HsmRCRT, and a
// fleet runs many terminals in one process beside the servers, so parsing on every step
// would contend on that lock. A real terminal parses a certificate once and keeps it; so
// does the module. Like the module, used by one thread at a time (Get and Remember update
// the kept copy even on a const memo).
class CertificateMemo {
 public:
  // The certificate `der` encodes: the kept one when `der` is the DER it was kept for,
  // otherwise a fresh parse (kept from then on). Errors as Certificate::FromDer.
  absl::StatusOr<crypto::Certificate> Get(const Bytes& der) const;
  // Keeps `certificate`, already parsed by the caller, for its own DER.
  void Remember(const crypto::Certificate& certificate) const;

 private:
  mutable Bytes der_;
  mutable std::optional<crypto::Certificate> certificate_;
};

class SecureModule {
 public:
  // Creates <state_dir>/<sn>/ with a fresh device key and seals `initial` (its sn must be
  // `sn`). ALREADY_EXISTS if the terminal exists.
  static absl::StatusOr<SecureModule> Create(const std::string& state_dir,
                                             const SecureModuleState& initial);
  // Opens an existing terminal. NOT_FOUND if there is none; DATA_LOSS if the state file
  // does not open under the device key (tampered, copied or corrupted).
  static absl::StatusOr<SecureModule> Open(const std::string& state_dir, const std::string& sn);

  SecureModule(SecureModule&&) noexcept = default;
  SecureModule& operator=(SecureModule&&) noexcept = default;

  const SecureModuleState& state() const { return state_; }
  // Seals and atomically replaces the state file, then adopts `next`. On error the file
  // and the in-memory state are unchanged. `next.sn` must not change.
  absl::Status Commit(SecureModuleState next);

  SecureModuleDescription Describe() const;

  // The burned-in HsmRCRT and the accepted HsmWCRT of the current state, parsed once and
  // kept while the state holds the same DER. WorkCertificate() is FAILED_PRECONDITION when
  // no work certificate is installed.
  absl::StatusOr<crypto::Certificate> TerminalRoot() const;
  absl::StatusOr<crypto::Certificate> WorkCertificate() const;
  // Hand the module a certificate the caller has parsed already (the root at manufacture,
  // the work certificate it just verified); used while the state holds the same DER.
  void RememberTerminalRoot(const crypto::Certificate& root) const { root_memo_.Remember(root); }
  void RememberWorkCertificate(const crypto::Certificate& work) const { work_memo_.Remember(work); }

  const std::string& directory() const { return dir_; }
  std::string state_file() const;
  std::string device_key_file() const;

 private:
  friend class SecureModuleTestPeer;
  SecureModule(std::string dir, crypto::SealingKey device_key, SecureModuleState state)
      : dir_(std::move(dir)), device_key_(std::move(device_key)), state_(std::move(state)) {}

  std::string dir_;
  crypto::SealingKey device_key_;
  SecureModuleState state_;
  CertificateMemo root_memo_;
  CertificateMemo work_memo_;
};

// The directory of terminal `sn` under `state_dir`.
std::string TerminalDirectory(const std::string& state_dir, std::string_view sn);

// Serialisation of the state (exposed for tests of the format). Format version 2 (magic
// "RKLSM\x02") carries the protocol and the TR-34 fields; version 1 files (patent terminals
// made before TR-34) still parse, as patent terminals. The output holds clear keys
// and is therefore SecretBytes; Parse is strict and reports corruption as DATA_LOSS.
absl::StatusOr<crypto::SecretBytes> SerializeState(const SecureModuleState& state);
absl::StatusOr<SecureModuleState> ParseState(const crypto::SecretBytes& serialized);

}  // namespace rkl::pos
