#pragma once
// KmsRepository: where rkl-kms keeps terminals (with table SN-TK_KMS), authentication
// sessions and audit. The core decides; the repository only stores, atomically:
//  - terminal writes are optimistic: UpdateTerminal names the version it read and fails
//    with ABORTED when another replica changed the row meanwhile (the core re-reads and
//    decides again), so no decision is ever made on stale state;
//  - session steps are compare-and-set on the session state, so of two replicas (or two
//    submissions) racing for one session exactly one proceeds;
//  - audit entries passed with a write are stored in the same transaction as the write.
// Implementations are thread-safe. No method ever receives or stores key material.

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kms_types.h"

namespace rkl::kms {

// A session step taken in the same transaction as a terminal update.
struct SessionMove {
  std::string id;
  SessionState from;
  SessionState to;
  std::optional<std::string> tmk_kcv;  // set on the session when given
};

struct TerminalFilter {
  std::optional<TerminalState> state;  // nullopt: all
  std::string sn_prefix;
  std::string after_sn;  // keyset paging: only SNs greater than this
  int limit = 100;
};

// The back-off rule ChargeProofAttempt applies (docs/kms.md "Lockout").
struct ProofAttemptPolicy {
  int64_t now_ms = 0;
  int64_t backoff_base_ms = 1000;    // wait after the first failure; doubles per failure
  int64_t backoff_max_ms = 600'000;  // the wait never exceeds this
  uint32_t lock_after = 100;         // no attempt once this many failures are counted
};

struct ProofAttempt {
  bool allowed = false;
  uint32_t failures = 0;       // consecutive failures counted, this attempt included
  int64_t retry_after_ms = 0;  // no further attempt before this
  int64_t version = 0;         // the terminal row's version afterwards
};

// What a terminal must be, beside the rule of ProofAttemptPolicy, for a proof in a session
// to be charged (KmsRepository::ClaimSessionAndChargeAttempt); every condition holds.
struct ProofPrecondition {
  std::vector<TerminalState> states;  // the terminal's state is one of these; empty: any
  bool session_auk = true;            // its AUK is the session's (auk_index)
  bool tek = false;                   // it has a TEK
  bool session_tmk = false;           // its TMK is the session's (tmk_kcv)
  // Its algorithm is one of these (those for which the proof has the right size).
  std::vector<crypto::KeyAlgorithm> algorithms;
};

// Whether `terminal` meets `pre` for a proof in `session` (the policy's rule aside).
inline bool MeetsPrecondition(const ProofPrecondition& pre, const AuthSession& session,
                              const TerminalRecord& terminal) {
  return (pre.states.empty() ||
          std::find(pre.states.begin(), pre.states.end(), terminal.state) != pre.states.end()) &&
         (!pre.session_auk || terminal.auk_index == session.auk_index) &&
         (!pre.tek || terminal.tek_index.has_value()) &&
         (!pre.session_tmk || terminal.tmk_kcv == session.tmk_kcv) &&
         std::find(pre.algorithms.begin(), pre.algorithms.end(), terminal.algorithm) !=
             pre.algorithms.end();
}

class KmsRepository {
 public:
  virtual ~KmsRepository() = default;

  // NOT_FOUND "sn: no such terminal" when absent.
  virtual absl::StatusOr<TerminalRecord> GetTerminal(const std::string& sn) = 0;
  // Creates terminal and SN-TK_KMS rows (a TR-34 terminal has no SN-TK_KMS row: its
  // ctk_pk is empty); ALREADY_EXISTS when the SN exists.
  virtual absl::Status InsertTerminal(const TerminalRecord& terminal,
                                      const std::vector<AuditEntry>& audit) = 0;
  // The first TKs of several SNs in one transaction: each row as InsertTerminal would
  // write it, with its own audit entries, for every SN that does not exist yet; an SN that
  // exists is left as it is (false in the answer, one per row, in order) and its entries
  // are not written. The rows' SNs differ.
  struct FirstTransportKey {
    TerminalRecord terminal;
    std::vector<AuditEntry> audit;
  };
  virtual absl::StatusOr<std::vector<bool>> InsertFirstTransportKeys(
      std::span<const FirstTransportKey> rows) = 0;
  // Replaces the terminal (and its SN-TK_KMS row) if its version is still
  // `terminal.version`; ABORTED otherwise. With `cancel_sessions`, the SN's OPEN and
  // AUTHENTICATED sessions become CANCELLED in the same transaction.
  virtual absl::Status UpdateTerminal(const TerminalRecord& terminal, bool cancel_sessions,
                                      const std::vector<AuditEntry>& audit) = 0;
  // UpdateTerminal (without cancelling sessions) and, in the same transaction, the session
  // step `move` if the session is still in `move.from`. Returns whether the session moved;
  // the terminal update stands either way. ABORTED, changing nothing, as UpdateTerminal.
  virtual absl::StatusOr<bool> UpdateTerminalAndMoveSession(const TerminalRecord& terminal,
                                                            const std::vector<AuditEntry>& audit,
                                                            const SessionMove& move) = 0;
  // UpdateTerminal (without cancelling sessions) and InsertSession(session) in one
  // transaction: both or neither. `audit` holds both writes' entries, in order. ABORTED,
  // changing nothing, as UpdateTerminal; ALREADY_EXISTS, changing nothing, if the session
  // id is taken.
  virtual absl::Status UpdateTerminalAndInsertSession(const TerminalRecord& terminal,
                                                      const std::vector<AuditEntry>& audit,
                                                      const AuthSession& session) = 0;
  virtual absl::StatusOr<std::vector<TerminalRecord>> ListTerminals(
      const TerminalFilter& filter) = 0;

  // ALREADY_EXISTS if the id is taken (the caller draws a new one). Opens the session only
  // if, at that moment, its terminal is TK_RECEIVED, AUTHENTICATED, TMK_DELIVERED or
  // INSTALLED (a terminal that lost its confirmation's reply authenticates again) with
  // AUK session.auk_index (checked with the insert, atomically); else FAILED_PRECONDITION,
  // changing nothing.
  virtual absl::Status InsertSession(const AuthSession& session,
                                     const std::vector<AuditEntry>& audit) = 0;
  // NOT_FOUND "session_id: no such session".
  virtual absl::StatusOr<AuthSession> GetSession(const std::string& id) = 0;
  // The session and the terminal `sn` together, as one read where the store allows it:
  // each answer as GetSession and GetTerminal would give it (NOT_FOUND when absent). The
  // default reads them one after the other.
  struct SessionAndTerminal {
    absl::StatusOr<AuthSession> session;
    absl::StatusOr<TerminalRecord> terminal;
  };
  virtual absl::StatusOr<SessionAndTerminal> GetSessionAndTerminal(const std::string& id,
                                                                   const std::string& sn) {
    absl::StatusOr<AuthSession> session = GetSession(id);
    if (!session.ok() && session.status().code() != absl::StatusCode::kNotFound) {
      return session.status();
    }
    absl::StatusOr<TerminalRecord> terminal = GetTerminal(sn);
    if (!terminal.ok() && terminal.status().code() != absl::StatusCode::kNotFound) {
      return terminal.status();
    }
    return SessionAndTerminal{std::move(session), std::move(terminal)};
  }
  // Claims the session — TransitionSession(id, from, to) — only if it is `sn`'s and has not
  // expired at `now_ms`, and reads the terminal with it. Returns nullopt, changing nothing,
  // when any of that does not hold (or either is absent): the caller reads both to tell the
  // terminal why. The returned session is as it was read, in state `from`. The default
  // reads, checks and transitions one after the other; PgKmsRepository does it in one
  // statement.
  virtual absl::StatusOr<std::optional<SessionAndTerminal>> ClaimSessionAndGetTerminal(
      const std::string& id, const std::string& sn, SessionState from, SessionState to,
      int64_t now_ms) {
    absl::StatusOr<SessionAndTerminal> read = GetSessionAndTerminal(id, sn);
    if (!read.ok()) return read.status();
    const absl::StatusOr<AuthSession>& session = read->session;
    if (!session.ok() || !read->terminal.ok() || session->sn != sn || session->state != from ||
        now_ms >= session->expires_at_ms) {
      return std::nullopt;
    }
    absl::StatusOr<bool> moved = TransitionSession(id, from, to, std::nullopt);
    if (!moved.ok()) return moved.status();
    if (!*moved) return std::nullopt;
    return *std::move(read);
  }
  // ClaimSessionAndGetTerminal and ChargeProofAttempt for `sn` together, both or neither:
  // the session is claimed and the attempt charged only if the claim is possible, the
  // terminal meets `pre` and `policy` allows an attempt. Returns nullopt, changing nothing,
  // when the claim is not possible (as ClaimSessionAndGetTerminal). Otherwise the session
  // and the terminal as read (the session in `from`, the terminal before any charge) and
  // the attempt: allowed when claimed and charged; else nothing changed and the attempt
  // holds the terminal's counter, retry_after_ms and version as read. Of two claims of one
  // session, one is charged. The default composes the other calls one after the other
  // (handing the session back when the charge is refused); PgKmsRepository does it in one
  // statement.
  struct ClaimedAttempt {
    AuthSession session;
    TerminalRecord terminal;
    ProofAttempt attempt;
  };
  virtual absl::StatusOr<std::optional<ClaimedAttempt>> ClaimSessionAndChargeAttempt(
      const std::string& id, const std::string& sn, SessionState from, SessionState to,
      const ProofPrecondition& pre, const ProofAttemptPolicy& policy) {
    absl::StatusOr<SessionAndTerminal> read = GetSessionAndTerminal(id, sn);
    if (!read.ok()) return read.status();
    if (!read->session.ok() || !read->terminal.ok() || read->session->sn != sn ||
        read->session->state != from || policy.now_ms >= read->session->expires_at_ms) {
      return std::nullopt;
    }
    ClaimedAttempt out{*std::move(read->session), *std::move(read->terminal), {}};
    out.attempt = {.allowed = false,
                   .failures = out.terminal.consecutive_failures,
                   .version = out.terminal.version};
    if (!MeetsPrecondition(pre, out.session, out.terminal)) return out;
    absl::StatusOr<bool> moved = TransitionSession(id, from, to, std::nullopt);
    if (!moved.ok()) return moved.status();
    if (!*moved) return out;
    absl::StatusOr<ProofAttempt> attempt = ChargeProofAttempt(sn, policy);
    if (!attempt.ok() || !attempt->allowed) {
      absl::StatusOr<bool> back = TransitionSession(id, to, from, std::nullopt);
      if (!attempt.ok()) return attempt.status();
      if (!back.ok()) return back.status();
      out.attempt = *attempt;
      return out;
    }
    out.attempt = *attempt;
    return out;
  }
  // Moves the session from `from` to `to` (and sets tmk_kcv when given). Returns false,
  // changing nothing, when it is no longer in `from`.
  virtual absl::StatusOr<bool> TransitionSession(const std::string& id, SessionState from,
                                                 SessionState to,
                                                 const std::optional<std::string>& tmk_kcv) = 0;

  // Counts one proof attempt (Crnd2 or install proof) against `sn` before HSM #2 judges it,
  // in one atomic step, so parallel sessions cannot spend more attempts than the rule
  // allows. Allowed only while the terminal is neither LOCKED nor REVOKED, its
  // retry_after_ms <= now and fewer than lock_after failures are counted; then the counter
  // goes up by one (a success resets it: UpdateTerminal with consecutive_failures 0),
  // retry_after_ms becomes now + min(max, base · 2^(failures before)) and the version moves
  // on. Not allowed: nothing changes and the answer holds the terminal's counter and
  // retry_after_ms as read. NOT_FOUND when the SN is absent.
  virtual absl::StatusOr<ProofAttempt> ChargeProofAttempt(const std::string& sn,
                                                          const ProofAttemptPolicy& policy) = 0;
  // Takes back an attempt HSM #2 never judged (it was unreachable): the counter down by one
  // (not below 0), retry_after_ms at most `now_ms`, the version moves on.
  virtual absl::Status RefundProofAttempt(const std::string& sn, int64_t now_ms) = 0;

  // Deletes every session that expired before `expired_before_ms`, whatever its state —
  // finished (CONFIRMED, FAILED, CANCELLED) or never used — and returns how many. One
  // statement; the terminals and the audit are untouched.
  virtual absl::StatusOr<int64_t> PurgeSessions(int64_t expired_before_ms) = 0;

  // Adds each count to its row (interval, sn, action, reason), creating it when absent; one
  // statement for them all.
  virtual absl::Status AddRefusalCounts(const std::vector<RefusalCount>& counts) = 0;
  // Every row, ordered by interval, sn, action, reason.
  virtual absl::StatusOr<std::vector<RefusalCount>> ListRefusalCounts() = 0;
  // Deletes the rows of intervals that began before `before_ms`; returns how many.
  virtual absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) = 0;

  virtual absl::Status AppendAudit(const std::vector<AuditEntry>& audit) = 0;
  // Ascending seq after `after_seq`; all terminals when sn is empty.
  virtual absl::StatusOr<std::vector<AuditEntry>> ListAudit(const std::string& sn,
                                                            uint64_t after_seq, int limit) = 0;
  // `failure_actions`: the audit actions counted as authentication failures.
  virtual absl::StatusOr<Statistics> GetStatistics(
      const std::vector<std::string>& failure_actions) = 0;

  // TR-34 KDH keys. InsertKdhKey stores an active key with its audit in one write;
  // FAILED_PRECONDITION "kdh: a KDH key is already active", changing nothing, when one is.
  virtual absl::Status InsertKdhKey(const KdhKeyRecord& key,
                                    const std::vector<AuditEntry>& audit) = 0;
  // Ordered by key index.
  virtual absl::StatusOr<std::vector<KdhKeyRecord>> ListKdhKeys() = 0;
  // NOT_FOUND "kdh: no KDH key is provisioned" when none is active.
  virtual absl::StatusOr<KdhKeyRecord> GetActiveKdhKey() = 0;
};

}  // namespace rkl::kms
