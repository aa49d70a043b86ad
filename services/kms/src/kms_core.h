#pragma once
// KmsCore: the key-management side of rkl (S107–S113, S401–S405) as plain business logic.
// It receives Ctk_pk from MTMS, has HSM #2 import TEK/AUK on a terminal's first contact,
// runs the reflection-safe mutual authentication of PROTOCOL §7, delivers the terminal's
// TMK as a TR-31 block under TEK (§8), records the install proof, and administers
// terminals (unlock, revoke, re-key). States and transitions: docs/kms.md.
//
// Guarantees:
//  - no key material ever passes through it: it holds HSM #2 key indexes and KCVs only,
//    and nothing it logs, audits or returns in an error holds more;
//  - every state change and every refusal is audited (actor, SN, action, indexes/KCVs),
//    except a proof refused during its SN's back-off, which writes nothing, and a terminal
//    call refused before any key operation or proof attempt (an unknown SN, a blocked
//    terminal, malformed input, a session not the caller's to use), which is counted per
//    minute, SN (or "*" for an SN KMS does not know), action and code, and reaches
//    refusal_counts at the next FlushRefusalCounts (docs/kms.md "Bounded state");
//  - every proof (Crnd2, install proof) is charged to its SN before HSM #2 sees it, so
//    failures back off and lock strictly however many sessions run in parallel;
//  - all state lives in the repository, so any number of KmsCore instances (replicas) on
//    one database can serve any step of any terminal's flow;
//  - every session step is claimed atomically: a session completes at most once.
// It knows nothing of gRPC; callers pass the authenticated actor for the audit and
// authorize before calling. Thread-safe (its only state of its own is the refusal tally, under
// a mutex);
// the repository and HSM port must outlive it.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ca_port.h"
#include "hsm_port.h"
#include "kms_metrics.h"
#include "kms_repository.h"
#include "kms_types.h"
#include "rkl/audit/actions.h"
#include "rkl/audit/refusal_tally.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/protocol/transport_key.h"
#include "tk_wait_port.h"

namespace rkl::kms {

struct KmsCoreOptions {
  uint64_t pk_index = 0;   // HSM #2 index of PK (KEY_USAGE_TK_WRAP)
  uint64_t mak_index = 0;  // HSM #2 index of MAK (KEY_USAGE_TK_MAC)
  absl::Duration session_ttl = absl::Seconds(60);
  // Failed proofs (docs/kms.md "Lockout"): after n consecutive failures the SN's next
  // proof waits min(backoff_max, backoff_base · 2^(n-1)); at lockout_threshold it is LOCKED
  // until an admin unlocks it. A zero backoff_base turns the back-off off.
  int lockout_threshold = 100;
  absl::Duration backoff_base = absl::Seconds(1);
  absl::Duration backoff_max = absl::Minutes(10);
  // PurgeExpiredSessions deletes sessions that expired longer ago than this. Until then a
  // terminal that lost ConfirmInstallation's reply may repeat it in the same session;
  // afterwards it confirms in a fresh one (docs/kms.md "Retries").
  absl::Duration session_retention = absl::Minutes(10);
  // PurgeRefusalCounts deletes the counts of minutes that began longer ago than this.
  absl::Duration refusal_retention = absl::Hours(24);

  // TR-34 (docs/kms.md "TR-34 terminals"). The KRD CAs whose KRD certificates KMS accepts
  // (config tr34.krd_ca_files); none: the TR-34 RPCs answer FAILED_PRECONDITION
  // "tr34: not configured" (so do they without a CA port).
  std::vector<crypto::Certificate> krd_cas = {};
  // The HSM id named in the KDH certificate (config tr34.kdh_hsm_id).
  std::string kdh_hsm_id = "hsm-kms";
  // The kdh-ca CRL is fetched again this long before its nextUpdate...
  absl::Duration crl_refresh_margin = absl::Minutes(10);
  // ... and once the copy KMS holds is this old, so that a revoked KDH certificate reaches
  // terminals within this time, not at the CRL's nextUpdate (config tr34.crl_max_age).
  absl::Duration crl_max_age = absl::Minutes(1);

  // BeginAuthentication's wait for a TK (docs/kms.md "Authentication and delivery"): the longest
  // wait a call may ask for (config authentication.tk_wait_max), and the port it waits on;
  // none: every call answers at once.
  absl::Duration tk_wait_max = absl::Seconds(20);
  TkWaitPort* tk_waits = nullptr;

  // The counters KmsCore (failed proofs, lockouts, deliveries, TK waits) and KmsGrpcService
  // (rate limited calls) move; none by default (kms_metrics.h).
  KmsMetrics metrics = {};
};

// TR-34 limits (kms.proto).
inline constexpr size_t kMaxCtKrdSize = 16 * 1024;
inline constexpr size_t kMaxRtKrdSize = 256;
inline constexpr size_t kMaxKrdNonceSize = 64;
inline constexpr size_t kMaxKrdRegistrations = 1000;

struct KeyTokenResult {
  Bytes key_token;
  std::string tmk_kcv;
  TerminalState state = TerminalState::kTmkDelivered;
};

// One RegisterKrdCredentials outcome (kms.proto KrdRegistration).
struct KrdRegistrationResult {
  std::string sn;
  std::string krd_id;
  absl::Status status;
  bool duplicate = false;
};

struct SubmitResult {
  TerminalState state;
  bool duplicate = false;
};

// One SubmitTransportKey of a SubmitTransportKeys batch.
struct TkSubmission {
  std::string sn;
  Bytes ctk_pk;
  std::string mtms_submission_id;
  std::string request_id;  // its flow's; empty: the caller's current one
};

struct BeginResult {
  std::string session_id;
  Bytes crnd1;
  Bytes rnd2;
  int64_t expires_at_ms = 0;
};

struct DeliveryResult {
  std::string key_block;  // TR-31, the TMK under TEK
  std::string tmk_kcv;
};

struct TerminalPage {
  std::vector<TerminalRecord> terminals;
  std::string next_page_token;  // empty on the last page
};

struct AuditPage {
  std::vector<AuditEntry> records;
  std::string next_page_token;
};

// Audit actions: rkl/audit/actions.h (audit::action). Failure actions count in Statistics.

// What a BeginAuthentication call that waited for a TK leaves itself before its deadline:
// the challenge (an HSM #2 command, a write) and the way back.
inline constexpr absl::Duration kTkWaitAnswerMargin = absl::Milliseconds(500);

inline constexpr int kDefaultPageSize = 100;
inline constexpr int kMaxPageSize = 1000;
inline constexpr size_t kMaxSubmissionIdLength = 128;
inline constexpr size_t kMaxSubmitBatch = 64;  // items of one SubmitTransportKeys

class KmsCore {
 public:
  // `ca` (kdh-ca certificates and CRL) may be null: TR-34 is then not configured.
  KmsCore(KmsRepository& repository, HsmPort& hsm, Clock clock, crypto::RandomSource random,
          KmsCoreOptions options, CaPort* ca = nullptr);

  // BeginAuthentication calls for an SN KMS has no transport key for (terminals polling
  // before forwarding completed, or probes). Counted and logged, not written to the audit
  // table: they concern no terminal, and a durable write per probe would let anyone force a
  // disk sync per request.
  uint64_t unknown_sn_begins() const { return unknown_sn_begins_.load(); }

  // The counters of KmsCoreOptions::metrics.
  const KmsMetrics& metrics() const { return options_.metrics; }

  // S107–S108, from MTMS. Idempotent for the same Ctk_pk; a new Ctk_pk supersedes a TK
  // whose TMK is not installed, and is refused for an installed terminal unless an admin
  // marked it for re-key.
  absl::StatusOr<SubmitResult> SubmitTransportKey(const std::string& actor, const std::string& sn,
                                                  std::span<const uint8_t> ctk_pk,
                                                  const std::string& mtms_submission_id);
  // Many SubmitTransportKey calls: one answer per item, in order, each the answer
  // SubmitTransportKey gives for it (same checks, refusals and audit records). The first TKs
  // of SNs KMS does not know yet are stored together in one write; every other item (an SN
  // KMS knows, or one named again later in the batch) then goes the single call's way, in
  // batch order. Each item's checks, audit records and log line carry its own request_id.
  // An error only for no items or more than kMaxSubmitBatch.
  absl::StatusOr<std::vector<absl::StatusOr<SubmitResult>>> SubmitTransportKeys(
      const std::string& actor, std::span<const TkSubmission> items);

  // S109–S111, S401–S402. Imports TEK/AUK on first use.
  // `source` (the caller's address, from the gRPC adapter) only labels refusal counts.
  // With `wait` > 0 and a TkWaitPort, an SN KMS does not know yet (or one awaiting a new TK
  // after a re-key mark) is waited for until its TK arrives, for min(wait, tk_wait_max) at
  // most and until kTkWaitAnswerMargin before `call_deadline` (the RPC's), on the injected
  // clock; then the call goes on as if it had come in just then. A call that waited in vain
  // is refused (and counted) once, as one that did not wait.
  absl::StatusOr<BeginResult> BeginAuthentication(
      const std::string& sn, std::span<const uint8_t> rnd1, std::string_view source = {},
      absl::Duration wait = absl::ZeroDuration(),
      absl::Time call_deadline = absl::InfiniteFuture());
  // S403–S405, S112.
  absl::StatusOr<DeliveryResult> CompleteAuthentication(const std::string& session_id,
                                                        const std::string& sn,
                                                        std::span<const uint8_t> crnd2,
                                                        std::string_view source = {});
  // S113. Idempotent: the same session and proof again answer INSTALLED, and an INSTALLED
  // terminal that authenticated again confirms its TMK in the new session (docs/kms.md).
  absl::StatusOr<TerminalState> ConfirmInstallation(const std::string& session_id,
                                                    const std::string& sn,
                                                    std::span<const uint8_t> proof,
                                                    std::string_view source = {});

  // ---- TR-34 terminals (docs/kms.md "TR-34 terminals") ----
  // CT_KDH: the active KDH certificate with the current kdh-ca CRL. FAILED_PRECONDITION
  // when no KDH key is provisioned; UNAVAILABLE when the CA cannot be reached and no cached
  // CRL is still current. Writes nothing (anyone may call it).
  absl::StatusOr<Bytes> GetKdhCredential(const std::string& sn, std::string_view source = {});
  // CT_KRD + RT_KRD in, a key token out (state TMK_DELIVERED). Binds the SN to the KRD on
  // first use; refuses another KRD for a bound SN (PERMISSION_DENIED), an INSTALLED
  // terminal not marked for re-key, a locked or revoked one, and a patent terminal.
  absl::StatusOr<KeyTokenResult> RequestKeyToken(const std::string& sn,
                                                 std::span<const uint8_t> ct_krd,
                                                 std::span<const uint8_t> rt_krd,
                                                 crypto::KeyAlgorithm algorithm,
                                                 std::string_view source = {});
  // The install proof of the last token: INSTALLED. Charged to the SN as every proof is
  // (back-off, lockout); a repeat of an accepted proof answers INSTALLED again.
  absl::StatusOr<TerminalState> ConfirmKeyToken(const std::string& sn,
                                                std::span<const uint8_t> proof,
                                                std::string_view source = {});
  // Admin: HSM #2 generates the KDH key, kdh-ca certifies it, KMS stores it as active.
  // FAILED_PRECONDITION when one is active already. `bits` 0 = 2048; `label` "" = "kdh".
  absl::StatusOr<KdhKeyRecord> ProvisionKdhKey(const std::string& actor, const std::string& label,
                                               uint32_t bits);
  absl::StatusOr<std::vector<KdhKeyRecord>> ListKdhKeys();
  // Admin: binds SNs to KRDs from CT_KRDs (1–1000), each on its own.
  absl::StatusOr<std::vector<KrdRegistrationResult>> RegisterKrdCredentials(
      const std::string& actor, const std::vector<Bytes>& ct_krds);

  // Administration.
  absl::StatusOr<TerminalRecord> GetTerminal(const std::string& sn);
  absl::StatusOr<TerminalPage> ListTerminals(std::optional<TerminalState> state,
                                             const std::string& sn_prefix, uint32_t page_size,
                                             const std::string& page_token);
  absl::StatusOr<TerminalRecord> UnlockTerminal(const std::string& actor, const std::string& sn,
                                                const std::string& reason);
  // REVOKED for good, then every key of the SN destroyed in HSM #2 (audited here and there).
  // If HSM #2 cannot be reached the terminal stays REVOKED and the error says so; repeating
  // the revocation then destroys the keys (a repeat with nothing left to destroy is
  // FAILED_PRECONDITION "already revoked").
  absl::StatusOr<TerminalRecord> RevokeTerminal(const std::string& actor, const std::string& sn,
                                                const std::string& reason);
  absl::StatusOr<TerminalRecord> MarkForRekey(const std::string& actor, const std::string& sn,
                                              const std::string& reason);
  absl::StatusOr<Statistics> GetStatistics();
  // Deletes the sessions that expired more than `session_retention` before the injected
  // clock's now — used, refused, cancelled or never answered — and returns how many. rkl-kms
  // calls it every `session.purge_interval`; tests call it directly. Any replica may run it
  // at any time: a session it deletes can no longer be used by anyone.
  absl::StatusOr<int64_t> PurgeExpiredSessions();
  // Adds the refusals counted since the last flush to refusal_counts (one statement) and
  // returns how many refusals that was. On failure the tally is kept for the next flush.
  // rkl-kms flushes every `refusals.flush_interval` and at shutdown; a crash loses at most
  // that much counting, never an audit record.
  absl::StatusOr<int64_t> FlushRefusalCounts();
  // Deletes the counts of minutes that began more than `refusal_retention` ago.
  absl::StatusOr<int64_t> PurgeRefusalCounts();
  absl::StatusOr<AuditPage> ListAudit(const std::string& sn, uint32_t page_size,
                                      const std::string& page_token);

 private:
  // A submission that passed SubmitTransportKey's checks of its own bytes.
  struct CheckedTk {
    std::string sn;
    Bytes ctk;  // the submitted Ctk_pk
    protocol::ParsedCtkPk parsed;
    std::string submission_id;
  };
  absl::StatusOr<CheckedTk> CheckSubmission(const std::string& actor, const std::string& sn,
                                            std::span<const uint8_t> ctk_pk,
                                            const std::string& submission_id);
  // The terminal row and audit record of an SN's first TK.
  std::pair<TerminalRecord, AuditEntry> FirstTk(const std::string& actor, const CheckedTk& tk);
  // SubmitTransportKey after its first insert found the SN known: duplicate, supersede or
  // refusal.
  absl::StatusOr<SubmitResult> SubmitForKnownSn(const std::string& actor, const CheckedTk& tk);

  // A decided change of one terminal row.
  struct Change {
    TerminalRecord record;
    bool cancel_sessions = false;
    std::vector<AuditEntry> audit = {};
    // A session step written in the same transaction (never with cancel_sessions).
    std::optional<SessionMove> session_move = std::nullopt;
    // Or a new session, written with the terminal or not at all (never with the above).
    std::optional<AuthSession> session_insert = std::nullopt;
  };
  // Returns the change to make, nullopt for none, or the refusal.
  using Decision = std::function<absl::StatusOr<std::optional<Change>>(const TerminalRecord&)>;

  // Reads the terminal (or starts from `known`, a record the caller has just read or
  // written), decides, writes; re-reads and decides again when another replica changed the
  // row in between. Returns the terminal as it is afterwards.
  // With a session_move in the change, *session_moved says whether the session moved.
  absl::StatusOr<TerminalRecord> Mutate(const std::string& sn, const Decision& decide,
                                        const TerminalRecord* known = nullptr,
                                        bool* session_moved = nullptr);
  // The back-off rule of the options, at the clock's now.
  ProofAttemptPolicy AttemptPolicy() const;
  // Why `attempt`, refused by the rule `policy`, was refused: while the SN backs off,
  // RESOURCE_EXHAUSTED with the time until the next attempt; at the threshold:
  // FAILED_PRECONDITION, locked; OK when the counters as read allow an attempt.
  static absl::Status ChargeRefusal(const ProofAttempt& attempt, const ProofAttemptPolicy& policy);
  // Charges one proof attempt to the SN before HSM #2 sees it (KmsRepository::
  // ChargeProofAttempt) and updates `terminal`'s counter and version; refused as
  // ChargeRefusal says.
  absl::StatusOr<ProofAttempt> ChargeAttempt(const std::string& sn, TerminalRecord& terminal);
  // Gives back an attempt HSM #2 did not judge (logged when that fails).
  void RefundAttempt(const std::string& sn);
  // Audits the failure the charged `attempt` turned out to be; locks the SN at the
  // threshold. UNAUTHENTICATED `message` with the time until the next attempt.
  absl::Status RecordFailure(const std::string& sn, const char* action, const std::string& detail,
                             const ProofAttempt& attempt, const std::string& message);
  // BeginAuthentication's read of `sn`, waiting up to `wait` for its TK when `wait` > 0
  // (registered with the TkWaitPort before the read, so no arrival goes unseen).
  absl::StatusOr<TerminalRecord> ReadForBegin(const std::string& sn, absl::Duration wait,
                                              absl::Time call_deadline);
  // Imports TEK/AUK into HSM #2 if not yet done; then also answers the challenge for
  // `rnd1` in the same HSM command and sets `challenge`, and opens `session` (its id,
  // auk_index and rnd2 set here) in the same write as the import: *opened says whether it
  // did. Not opened: already imported, or imported meanwhile by another replica.
  absl::StatusOr<TerminalRecord> EnsureImported(TerminalRecord terminal,
                                                std::span<const uint8_t> rnd1,
                                                std::optional<AuthChallengeResult>& challenge,
                                                AuthSession* session, bool* opened);
  // The audit entry of an opened session.
  AuditEntry BeginAudit(const AuthSession& session, const std::string& auk_kcv);
  // HSM #2 destroys the SN's keys; audited. Whether it destroyed any.
  absl::StatusOr<bool> DestroyKeys(const std::string& actor, const std::string& sn,
                                   const std::string& reason);
  absl::StatusOr<TerminalRecord> AdminChange(
      const std::string& actor, const std::string& sn, const std::string& reason,
      const char* action, const std::function<absl::Status(TerminalRecord&)>& change);
  // `session` (as read) if it is `sn`'s, in state `want` and not expired; refusals are
  // counted (CountRefusal).
  // What a counted refusal is filed under: the RPC's action and the caller's address.
  struct RefusalScope {
    const char* action;
    std::string_view source;
  };
  absl::StatusOr<AuthSession> LoadSession(absl::StatusOr<AuthSession> session,
                                          const std::string& sn, SessionState want,
                                          const RefusalScope& scope);
  // What a proof in a session must meet before it is an attempt: `pre` for the repository,
  // and `refusal`, the same rules as the refusal that tells the terminal which one failed
  // (OK when none did; the terminal blocked comes first). `not_claimable`: why a session
  // another claim took is refused.
  struct ProofCheck {
    ProofPrecondition pre;
    std::function<absl::Status(const AuthSession&, const TerminalRecord&)> refusal;
    const char* not_claimable;
  };
  // The session `id` of `sn` claimed from `from` to `to` and the proof attempt in it
  // charged, with its terminal (`id` and `sn` checked for form first, before any read):
  // one statement when everything about the session, the terminal (`check`) and the SN's
  // attempts allows it. Else nothing is claimed or charged and the refusal is returned:
  // the session's as LoadSession gives it, `check.refusal`, `not_claimable` (all counted)
  // or ChargeRefusal's (not counted). A session of `sn` found in state `done` (the step it
  // is asked for was completed already) is returned unclaimed, uncharged and unaudited with
  // repeat set: the caller answers the repetition. `terminal` has the charge's counter and
  // version.
  struct ClaimedSession {
    AuthSession session;
    TerminalRecord terminal;
    ProofAttempt attempt;
    bool repeat = false;
  };
  absl::StatusOr<ClaimedSession> ClaimAttempt(const std::string& id, const std::string& sn,
                                              SessionState from, SessionState to,
                                              const RefusalScope& scope,
                                              std::optional<SessionState> done,
                                              const ProofCheck& check);
  // ConfirmInstallation for a session already CONFIRMED: OK/INSTALLED if the terminal still
  // has that session's TMK installed and HSM #2 verifies `proof` again; writes nothing.
  absl::StatusOr<TerminalState> RepeatConfirmation(const AuthSession& session,
                                                   const TerminalRecord& terminal,
                                                   std::span<const uint8_t> proof,
                                                   std::string_view source);
  // Back from `claimed` to `from` after a refusal that is not an attempt.
  void UnclaimSession(const std::string& id, SessionState claimed, SessionState from);
  // After an HSM error in a claimed session: back to `reopen` when the HSM may simply be
  // asked again, else FAILED.
  void ReleaseSession(const std::string& id, SessionState claimed, SessionState reopen,
                      const absl::Status& error);

  AuditEntry Audit(std::string actor, std::string action, std::string sn, std::string detail,
                   const absl::Status& result = absl::OkStatus()) const;
  void AuditFailure(const std::string& actor, const char* action, const std::string& sn,
                    const std::string& detail, const absl::Status& result);
  // Counts a refusal made before any key operation (see the guarantees above); `sn` is
  // kAnySn unless the SN is a terminal KMS knows.
  void CountRefusal(const RefusalScope& scope, const std::string& sn, const absl::Status& refusal);
  int64_t NowMs() const;
  std::string NewSessionId() const;

  // TR-34 helpers (kms_core_tr34.cc).
  absl::Status CheckTr34Configured() const;
  // A CT_KRD checked as RequestKeyToken checks it: one certificate, role KRD under a
  // configured KRD CA, CN an SN.
  struct CheckedKrd {
    Bytes certificate_der;
    std::string sn;
    std::string krd_id;
  };
  absl::StatusOr<CheckedKrd> CheckKrdCredential(std::span<const uint8_t> ct_krd) const;
  // The SN's TR-34 terminal, bound to `krd` now if KMS did not know the SN; refusals as
  // RequestKeyToken's. `*created` says whether it was bound now.
  absl::StatusOr<TerminalRecord> BindKrd(const std::string& actor, const CheckedKrd& krd,
                                         bool* created);
  // The kdh-ca CRL (DER), from the cache while it is current (see KmsCoreOptions).
  absl::StatusOr<Bytes> CurrentKdhCrl();

  KmsRepository& repository_;
  HsmPort& hsm_;
  CaPort* ca_;
  absl::Mutex crl_mu_;
  std::optional<KdhCrl> crl_cache_ ABSL_GUARDED_BY(crl_mu_);
  int64_t crl_fetched_s_ ABSL_GUARDED_BY(crl_mu_) = 0;
  std::atomic<uint64_t> unknown_sn_begins_{0};
  Clock clock_;
  crypto::RandomSource random_;
  KmsCoreOptions options_;
  audit::RefusalTally refusals_;
};

// "terminal:<sn>": the audit actor of the terminal RPCs.
std::string TerminalActor(const std::string& sn);

}  // namespace rkl::kms
