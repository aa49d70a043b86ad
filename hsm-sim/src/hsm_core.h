#pragma once
// HsmCore: every command of rkl-hsm, free of gRPC. The only place in rkl where keys are in
// clear, and only inside one command's stack frame (SecretBytes, zeroed on destruction).
//
// Guarantees:
//  - callers name keys by index; no result carries clear key material — keys leave only
//    wrapped (OAEP, KWP in Ctk_pk, TR-31), and components enter only OAEP-encrypted;
//  - each key has one usage; using it for anything else, or a terminal key for another SN,
//    is PERMISSION_DENIED; unknown (or deleted) indexes are NOT_FOUND; a superseded key is
//    FAILED_PRECONDITION; a record that fails its integrity check is INTERNAL and unused;
//  - every command appends exactly one audit record (actor, action, SN, indexes, KCVs,
//    result). A command that changes keys writes it in the same transaction as the change;
//    a failed command writes it separately. A successful command whose audit record cannot
//    be written fails (nothing happens unaudited);
//  - decryption and format failures of transport keys and components are one uniform
//    UNAUTHENTICATED error; error messages never contain key material or plaintext;
//  - after a failed self-test every command except GetKeyInfo returns FAILED_PRECONDITION
//    "HSM self-test failed";
//  - a transport key is translated only with evidence that an operator signed exactly it
//    (OperatorEvidence), checked before anything is decrypted;
//  - a TMK is bound to the TEK it was made for and is exported under no other key; a new
//    transport key for an SN supersedes the SN's TMK with its TEK and AUK, so the next
//    delivery makes a new TMK (PROTOCOL §8, re-keying);
//  - a TR-34 TMK is bound to the KRD it was made for and is put in a key token for no other
//    KRD; the KDH key signs key tokens and nothing else;
//  - DestroyTerminalKeys erases every key of an SN (revocation).
// Authorization (who may call which command) is the gRPC adapter's job; the core receives
// the authenticated identity for audit and for custodian rules.
// Thread-safe: commands may run concurrently; shared state lives under the KeyBarrier.
// The commands are defined one file per domain: hsm_core_ceremony.cc, hsm_core_transport.cc
// (RSA work keys, translate, import), hsm_core_terminal.cc (TMK, authentication, delivery,
// revocation), hsm_core_tr34.cc (KDH key, key tokens) and hsm_core_admin.cc; hsm_core.cc holds
// construction and the command unit.

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "audit_log.h"
#include "key_barrier.h"
#include "operator_evidence.h"
#include "rkl/common/clock.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/random.h"

namespace rkl::hsm {

struct HsmCoreOptions {
  bool self_test_passed = true;
  absl::Duration default_ceremony_ttl = absl::Minutes(15);
  absl::Duration max_ceremony_ttl = absl::Hours(24);
  int ceremony_key_bits = 3072;
  // Threads that decrypt the items of one TranslateTransportKeys call at once (the calling
  // thread is one of them); 0 = one per core.
  int batch_threads = 0;
  // The operator-ca certificates whose operators' packages this HSM translates (HSM #1);
  // none: translation is refused.
  std::vector<crypto::Certificate> operator_cas{};
  // TR-34 (HSM #2): the KRD CA certificates whose KRDs this HSM builds key tokens for; none:
  // the TR-34 commands answer FAILED_PRECONDITION "tr34: not configured".
  std::vector<crypto::Certificate> krd_cas{};
  // This HSM's own id (config hsm_id), which GetCertifiableKey tells the CA.
  std::string hsm_id{};
};

struct GeneratedRsaKey {
  uint64_t key_index = 0;
  Bytes public_key_der{};
};

// A key the CA may certify, as this HSM states it (GetCertifiableKey).
struct CertifiableKey {
  Bytes public_key_der{};
  KeyUsage usage = KeyUsage::kKdhSign;
  std::string hsm_id{};
};

struct BegunCeremony {
  std::string ceremony_id{};
  Bytes component_encryption_key_der{};
  int64_t expires_at_ms = 0;
};

struct CeremonyStatus {
  Ceremony ceremony;
  Bytes component_encryption_key_der{};  // empty unless OPEN
};

struct AddedComponent {
  std::string component_kcv{};
  uint32_t components_added = 0;
  uint32_t components_required = 0;
};

struct CompletedCeremony {
  uint64_t key_index = 0;
  std::string kcv{};
};

struct TranslateCommand {
  uint64_t pr_index = 0;
  Bytes ctk_pu{};
  std::string sn{};
  int64_t created_at_ms = 0;
  uint64_t pk_index = 0;
  uint64_t mak_index = 0;
  std::optional<crypto::KeyAlgorithm> algorithm{};  // nullopt: not given / unknown code
  TranslateEvidence evidence{};                     // the operator-signed package it comes from
  // TranslateTransportKeys: the item's flow, for its audit record; empty = the call's.
  std::string request_id{};
};

struct ImportCommand {
  uint64_t pk_index = 0;
  uint64_t mak_index = 0;
  std::string sn{};
  Bytes ctk_pk{};
};

struct ImportedTransportKey {
  uint64_t tek_index = 0;
  std::string tek_kcv{};
  uint64_t auk_index = 0;
  std::string auk_kcv{};
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
  int64_t created_at_ms = 0;
};

struct GeneratedTmk {
  uint64_t tmk_index = 0;
  std::string kcv{};
  bool created = false;
};

struct AuthChallengeResult {
  Bytes rnd2{};
  Bytes crnd1{};
};

struct AuthVerifyCommand {
  uint64_t auk_index = 0;
  std::string sn{};
  Bytes rnd1{}, rnd2{}, crnd2{};
};

struct ExportedKeyBlock {
  std::string key_block{};
  std::string key_kcv{};
  std::string kek_kcv{};
};

struct ImportedAndChallenged {
  ImportedTransportKey imported{};
  AuthChallengeResult challenge{};
};

struct AuthenticatedDelivery {
  GeneratedTmk tmk{};
  ExportedKeyBlock block{};
};

struct InstallProofCommand {
  uint64_t auk_index = 0;
  std::string sn{};
  std::string tmk_kcv{};
  Bytes rnd1{}, rnd2{}, proof{};
};

// A TR-34 two-pass key token for one KRD (BuildKeyToken).
struct KeyTokenCommand {
  std::string sn{};
  std::optional<crypto::KeyAlgorithm> algorithm{};  // nullopt: not given / unknown code
  Bytes krd_certificate_der{};
  Bytes krd_nonce{};  // 8-64 bytes
  uint64_t kdh_key_index = 0;
  Bytes kdh_certificate_der{};
  std::vector<Bytes> crls{};  // 0-4
  bool replace_existing = false;
};

struct BuiltKeyToken {
  Bytes key_token{};
  uint64_t tmk_index = 0;
  std::string tmk_kcv{};
  bool created = false;
  std::string krd_id{};
};

struct KeyTokenProofCommand {
  uint64_t tmk_index = 0;
  std::string sn{};
  Bytes krd_nonce{};
  Bytes proof{};
};

class HsmCore {
 public:
  // `store` and `audit` must outlive the core. `rng` fills nonces, Rnd2, ceremony ids
  // and symmetric keys (tests inject a deterministic one; production passes FillRandom).
  HsmCore(KeyBarrier& store, AuditLog& audit, Clock clock, crypto::RandomSource rng,
          HsmCoreOptions options);

  bool self_test_passed() const { return options_.self_test_passed; }

  absl::StatusOr<GeneratedRsaKey> GenerateRsaKeyPair(const std::string& caller, uint32_t bits,
                                                     const std::string& label);
  absl::StatusOr<Bytes> GetPublicKey(const std::string& caller, uint64_t key_index);
  // For the CA: the public half, usage and this HSM's id of a key the CA certifies, so that
  // the CA certifies only a key this HSM really holds. Only a live (ACTIVE) RSA private key
  // of usage KDH_SIGN or TRANSPORT_DECRYPT: INVALID_ARGUMENT (no index), NOT_FOUND (unknown
  // or deleted), PERMISSION_DENIED (any other key), FAILED_PRECONDITION (superseded).
  absl::StatusOr<CertifiableKey> GetCertifiableKey(const std::string& caller, uint64_t key_index);

  // TR-34 (HSM #2, docs/hsm.md "TR-34 key tokens"). The KDH signing key: GenerateRsaKeyPair
  // with usage KDH_SIGN, a key that signs key tokens and nothing else.
  absl::StatusOr<GeneratedRsaKey> GenerateKdhKey(const std::string& caller, uint32_t bits,
                                                 const std::string& label);
  // One command (one unit, one audit record): checks the KRD certificate (CheckRole kKrd
  // under one of options.krd_cas, subject CN = sn), the KDH key (usage KDH_SIGN, live) and
  // that the KDH certificate holds its public key; takes the SN's TMK — the live one if it
  // is bound to this KRD and !replace_existing, else a new one bound to this KRD that
  // supersedes the SN's live TMK; a live TMK bound to another KRD or to a TEK is refused
  // (PERMISSION_DENIED) unless replace_existing — and returns it in a two-pass key token
  // signed with the KDH key and encrypted to the KRD.
  absl::StatusOr<BuiltKeyToken> BuildKeyToken(const std::string& caller,
                                              const KeyTokenCommand& command);
  // The KRD's install proof (tr34::InstallProof) for the live KRD-bound TMK at tmk_index,
  // bound to sn: UNAUTHENTICATED "proof: does not verify" for any mismatch.
  absl::Status VerifyKeyTokenInstallProof(const std::string& caller,
                                          const KeyTokenProofCommand& command);

  // Key ceremonies (S101) belong to key custodians: Begin, AddComponent and Complete refuse
  // (PERMISSION_DENIED, audited) a caller that is not a custodian:<name> identity; a
  // custodian adds at most one component; Complete refuses unless the components came from
  // at least two distinct custodians. The gRPC layer admits only custodian:* to these
  // methods as well; the core checks again so no other path can skip it.
  absl::StatusOr<BegunCeremony> BeginCeremony(const std::string& caller, const std::string& label,
                                              KeyType key_type, uint32_t component_count,
                                              uint32_t ttl_seconds);
  absl::StatusOr<CeremonyStatus> GetCeremony(const std::string& caller,
                                             const std::string& ceremony_id);
  // The custodian is `caller`, a custodian:<name> identity.
  absl::StatusOr<AddedComponent> AddComponent(const std::string& caller,
                                              const std::string& ceremony_id,
                                              const Bytes& encrypted_component);
  absl::StatusOr<CompletedCeremony> CompleteCeremony(const std::string& caller,
                                                     const std::string& ceremony_id);

  absl::StatusOr<Bytes> TranslateTransportKey(const std::string& caller,
                                              const TranslateCommand& command);
  // Many TranslateTransportKey commands in one call (1 to kMaxTranslateBatch): every item
  // is checked, translated and audited exactly as TranslateTransportKey would do it (same
  // errors, one audit record each), and items fail independently — one result per item, in
  // order. The items' keys are read once and their records are written in one group. An
  // error of the call itself (no items or too many, self-test, database, audit) fails
  // every item; each item is then audited with that error.
  static constexpr size_t kMaxTranslateBatch = 64;
  absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      const std::string& caller, std::span<const TranslateCommand> commands);
  absl::StatusOr<AuthChallengeResult> AuthChallenge(const std::string& caller, uint64_t auk_index,
                                                    const std::string& sn, const Bytes& rnd1);
  absl::Status VerifyInstallProof(const std::string& caller, const InstallProofCommand& command);

  // Composite commands (one transaction, one audit record each):
  //  ImportAndChallenge      = import Ctk_pk (PROTOCOL §6: the same transport key again
  //                            returns the keys it made; a new one supersedes the SN's live
  //                            TEK, AUK and TMK), then AuthChallenge with the imported AUK;
  //  AuthenticateAndDeliver  = verify Crnd2, then the SN's TMK (the live one unless
  //                            replace_existing; a new one is bound to `tek_index`), then
  //                            its TR-31 export under `tek_index`, which must be the TEK the
  //                            TMK is bound to (PERMISSION_DENIED otherwise) — no TMK is
  //                            made or exported unless Crnd2 verified in the same command.
  absl::StatusOr<ImportedAndChallenged> ImportAndChallenge(const std::string& caller,
                                                           const ImportCommand& command,
                                                           const Bytes& rnd1);
  absl::StatusOr<AuthenticatedDelivery> AuthenticateAndDeliver(
      const std::string& caller, const AuthVerifyCommand& verify,
      std::optional<crypto::KeyAlgorithm> algorithm, bool replace_existing, uint64_t tek_index);

  // Revocation: erases every key bound to `sn` that is not yet deleted (TEK, AUK, TMK, live
  // or superseded) and returns their indexes, in one transaction with its audit record.
  // Idempotent: a repeat destroys nothing and returns none.
  absl::StatusOr<std::vector<uint64_t>> DestroyTerminalKeys(const std::string& caller,
                                                            const std::string& sn,
                                                            const std::string& reason);

  absl::StatusOr<KeyRecord> GetKeyInfo(const std::string& caller, uint64_t key_index);
  absl::Status DeleteKey(const std::string& caller, uint64_t key_index);
  absl::StatusOr<Bytes> GenerateRandom(const std::string& caller, uint32_t length);
  // `anchor`: empty, or an AuditAnchor line (INVALID_ARGUMENT if it is not one,
  // UNAUTHENTICATED if its MAC is not this HSM's).
  absl::StatusOr<AuditVerification> VerifyAuditChain(const std::string& caller,
                                                     std::string_view anchor);
  // Anchors the audit chain's head now (AuditLog::Anchor).
  absl::StatusOr<AuditAnchor> AnchorAuditChain(const std::string& caller);

  // Audits a call the adapter refused (authorization), so denials are on record too: action
  // rpc.refused, detail "method=<RPC> error=...", as the CA records its refusals.
  void RecordRefusal(const std::string& caller, const std::string& method,
                     const absl::Status& status);

 private:
  // How a command runs (RunUnit).
  enum class UnitKind {
    kTransaction,  // KeyBarrier::Transact
    kReadOnly,     // KeyBarrier::TransactReadOnly: for commands that change no key
    kOneWrite,     // KeyBarrier::TransactOneWrite: for commands whose writes are new keys and
                   // superseding the live keys they found
  };
  struct UnitOptions {
    UnitKind kind = UnitKind::kTransaction;
    // Uses keys or randomness: refused (FAILED_PRECONDITION, audited) after a failed
    // self-test.
    bool uses_crypto = true;
    // Runs of the whole command; each run after the first follows an ALREADY_EXISTS.
    int attempts = 1;
  };
  // One command: body(tx, record) in one unit of work with its audit record.
  template <typename Fn>
  auto RunUnit(AuditEvent event, UnitOptions options, Fn&& body)
      -> std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&>;
  void RecordFailure(AuditEvent event, const absl::Status& status);
  int BatchThreads() const;
  // Makes `event` the record of a command that failed with `status`.
  void MarkFailed(AuditEvent& event, const absl::Status& status);
  // The bodies of the commands, for use inside one unit of work (RunUnit).
  // Translate in three steps, so a batch can decrypt its items in parallel: checks and keys
  // (in the unit), the RSA decryption (no store access), then Ctk_pk and the audit detail.
  struct TranslateKeys {
    std::shared_ptr<const crypto::PrivateKey> pr;
    crypto::SecretBytes pk, mak;
  };
  absl::StatusOr<TranslateKeys> PrepareTranslate(KeyTransaction& tx, const TranslateCommand& cmd);
  // The operator evidence, then the RSA decryption (no store access): the parallel part of
  // a batch. Evidence errors come back as they are; decryption errors are left for
  // FinishTranslate to make uniform.
  struct Decrypted {
    absl::Status evidence;
    std::string operator_id;
    absl::StatusOr<crypto::SecretBytes> payload = absl::InternalError("not decrypted");
  };
  Decrypted CheckAndDecrypt(const TranslateKeys& keys, const TranslateCommand& cmd) const;
  absl::StatusOr<Bytes> FinishTranslate(AuditEvent& audit, const TranslateCommand& cmd,
                                        const TranslateKeys& keys, const Decrypted& decrypted);
  absl::StatusOr<Bytes> DoTranslate(KeyTransaction& tx, AuditEvent& audit,
                                    const TranslateCommand& cmd);
  absl::StatusOr<ImportedTransportKey> DoImport(KeyTransaction& tx, AuditEvent& audit,
                                                const ImportCommand& cmd);
  absl::StatusOr<GeneratedTmk> DoGenerateTmk(KeyTransaction& tx, AuditEvent& audit,
                                             const std::string& sn,
                                             std::optional<crypto::KeyAlgorithm> algorithm,
                                             bool replace_existing, uint64_t tek_index);
  absl::StatusOr<AuthChallengeResult> DoAuthChallenge(KeyTransaction& tx, AuditEvent& audit,
                                                      uint64_t auk_index, const std::string& sn,
                                                      const Bytes& rnd1);
  absl::Status DoAuthVerify(KeyTransaction& tx, AuditEvent& audit, const AuthVerifyCommand& cmd);
  absl::StatusOr<ExportedKeyBlock> DoExport(KeyTransaction& tx, AuditEvent& audit,
                                            uint64_t key_index, uint64_t kek_index,
                                            const std::string& sn);
  absl::Status ExpireCeremonies();
  // A custodian's step on an open ceremony (adding a component, completing it): expired
  // ceremonies are swept first; then, in one unit (RunUnit), the caller must be a custodian
  // and `ceremony_id` an open ceremony, and body(tx, record, ceremony, now) takes the step.
  template <typename Fn>
  auto RunCustodianStep(AuditEvent event, const std::string& caller, const std::string& ceremony_id,
                        Fn&& body)
      -> std::invoke_result_t<Fn&, KeyTransaction&, AuditEvent&, Ceremony&, int64_t>;
  crypto::SecretBytes NewSymmetricKey(crypto::KeyAlgorithm algorithm);
  absl::StatusOr<Bytes> LoadPublicKey(KeyTransaction& tx, uint64_t key_index);
  // An RSA key pair with `usage` (GenerateRsaKeyPair, GenerateKdhKey), audited as
  // `audit_action`.
  absl::StatusOr<GeneratedRsaKey> GenerateRsaKey(const std::string& caller, uint32_t bits,
                                                 const std::string& label, KeyUsage usage,
                                                 const char* audit_action);
  // The KRD certificate of a BuildKeyToken, checked against options_.krd_cas and the SN.
  absl::StatusOr<crypto::Certificate> CheckKrdCertificate(const KeyTokenCommand& cmd) const;

  KeyBarrier& store_;
  AuditLog& audit_;
  const Clock clock_;
  crypto::RandomSource rng_;
  const HsmCoreOptions options_;
  const OperatorEvidence evidence_;
};

// The SN as an audit record keeps it: a valid SN (or none) as it is; anything else a caller
// sent, of any length, as "invalid:<hex of its first 16 bytes>[...](<length> bytes)".
std::string AuditSn(const std::string& sn);

}  // namespace rkl::hsm
