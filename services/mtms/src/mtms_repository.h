#pragma once
// What rkl-mtms keeps, and the operations on it that must be atomic.
//
// MtmsRepository is the storage interface of the core and the forwarder. PgMtmsRepository
// (mtms_pg_repository.h) is the real one; unit tests use an in-memory fake, and the same
// conformance suite runs against both.
//
// Guarantees every implementation gives:
//  - at most one work key is CURRENT (a database constraint in PostgreSQL);
//  - (operator_id, nonce) is unique across all submissions ever stored, so a replay is
//    detected even after a restart;
//  - a submission is inserted only while its work key is known and not RETIRED, checked in
//    the same transaction as the insert;
//  - ClaimDue hands each RECEIVED row to at most one claimant until its lease ends, even
//    with several replicas polling one database (FOR UPDATE SKIP LOCKED plus a lease
//    column, so no transaction stays open across HSM or KMS calls);
//  - Finish* changes a row only while the caller's claim token still holds it, so a
//    claimant whose lease expired cannot overwrite the outcome of the one that took over;
//  - every state change writes its audit record in the same transaction.
// Thread-safe. Rows hold only public data: Ctk_Pu is ciphertext under Pu.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/audit/audit_event.h"
#include "rkl/audit/refusal_tally.h"
#include "rkl/common/hex.h"

namespace rkl::mtms {

enum class WorkKeyState { kCurrent, kPrevious, kRetired };
const char* WorkKeyStateName(WorkKeyState state);  // "CURRENT", "PREVIOUS", "RETIRED"

struct WorkKeyRecord {
  std::string serial_hex;  // upper-case hex, as the CA reports it
  std::string hsm_id;
  uint64_t hsm_key_index = 0;     // index of Pr inside HSM #1
  Bytes public_key_der;           // Pu
  std::string certificate_pem;    // HsmWCRT
  std::string terminal_root_pem;  // HsmRCRT it chains to, as fetched when provisioned
  WorkKeyState state = WorkKeyState::kCurrent;
  int64_t created_at_ms = 0;
  int64_t retired_at_ms = 0;  // 0 unless RETIRED
};

enum class SubmissionState { kReceived, kForwarded, kRejected };
const char* SubmissionStateName(SubmissionState state);  // "RECEIVED", ...

// One row of table SN-Key_MTMS.
struct SubmissionRecord {
  std::string submission_id;
  std::string sn;
  std::string operator_id;
  Bytes nonce;
  Bytes package;                         // B, byte-exact as received
  Bytes signature;                       // DER ECDSA over B, byte-exact
  std::string operator_certificate_pem;  // byte-exact
  std::string operator_certificate_serial;
  std::string work_certificate_serial;
  Bytes ctk_pu;
  uint8_t algorithm_code = 0;
  int64_t created_at_ms = 0;  // from the package
  int64_t received_at_ms = 0;
  SubmissionState state = SubmissionState::kReceived;
  std::string reason;  // REJECTED only
  uint32_t attempts = 0;
  int64_t next_attempt_at_ms = 0;
  std::string last_error;
  int64_t forwarded_at_ms = 0;
  // The request id of the call that submitted it ('' before request ids); set by the
  // repository from the submitting thread's current id. Forwarding runs under it.
  std::string request_id;

  // What the forwarder needs besides the row, read by the statement that claimed it
  // (ClaimDue, or Intake with a claim); unset on rows read any other way.
  struct ClaimFacts {
    std::optional<WorkKeyState> work_key_state;  // nullopt: the serial is unknown
    uint64_t work_key_index = 0;                 // the work key's Pr in HSM #1
    // A row for the same SN with a later created_at was RECEIVED or FORWARDED.
    bool newer_sibling = false;
  };
  std::optional<ClaimFacts> claim;
};

// One audit record; never key material: identities, SNs, indexes, serials, KCVs, codes.
// A listing sets seq.
using AuditEntry = audit::AuditEvent;

enum class InsertOutcome { kInserted, kUnknownWorkKey, kRetiredWorkKey, kReplay };

// A lease for the row intake inserts: the row is stored already claimed by `claim_token`
// until `lease_until_ms`, as if ClaimDue had claimed it.
struct IntakeClaim {
  std::string claim_token;
  int64_t lease_until_ms = 0;
};

struct IntakeResult {
  InsertOutcome outcome = InsertOutcome::kUnknownWorkKey;
  // kInserted with a claim: the row's SubmissionRecord::ClaimFacts, as ClaimDue reports them.
  SubmissionRecord::ClaimFacts facts;
};

// Keyset paging over (received_at_ms, submission_id).
struct QueueCursor {
  int64_t received_at_ms = 0;
  std::string submission_id;
};

struct QueueCounts {
  uint64_t received = 0;
  uint64_t forwarded = 0;
  uint64_t rejected = 0;
  // received_at_ms of the oldest RECEIVED row; 0 when there is none.
  int64_t oldest_received_at_ms = 0;

  // The count of rows in `state`.
  uint64_t& Of(SubmissionState state) {
    switch (state) {
      case SubmissionState::kForwarded:
        return forwarded;
      case SubmissionState::kRejected:
        return rejected;
      case SubmissionState::kReceived:
        break;
    }
    return received;
  }
};

class MtmsRepository {
 public:
  virtual ~MtmsRepository() = default;

  // ---- Work keys ----
  virtual absl::StatusOr<std::optional<WorkKeyRecord>> CurrentWorkKey() = 0;
  virtual absl::StatusOr<std::optional<WorkKeyRecord>> FindWorkKey(const std::string& serial) = 0;
  // Newest first.
  virtual absl::StatusOr<std::vector<WorkKeyRecord>> ListWorkKeys() = 0;

  struct InstallResult {
    WorkKeyRecord current;   // the CURRENT key afterwards
    bool installed = false;  // false: a CURRENT key existed and `rotate` was false
  };
  // Makes `key` CURRENT and the previous CURRENT key PREVIOUS, unless a CURRENT key exists
  // and `rotate` is false: then nothing changes and the existing key is returned.
  // Serialised against concurrent installs.
  virtual absl::StatusOr<InstallResult> InstallWorkKey(const WorkKeyRecord& key, bool rotate,
                                                       const AuditEntry& audit) = 0;

  enum class RetireOutcome { kRetired, kNotFound, kIsCurrent, kInFlight };
  struct RetireResult {
    RetireOutcome outcome = RetireOutcome::kNotFound;
    WorkKeyRecord key;       // when found
    uint64_t in_flight = 0;  // RECEIVED rows naming the key
  };
  // Retires a PREVIOUS key (idempotent for a RETIRED one). Refused for the CURRENT key, and
  // while RECEIVED rows name the key unless `force`.
  virtual absl::StatusOr<RetireResult> RetireWorkKey(const std::string& serial, bool force,
                                                     int64_t now_ms, const AuditEntry& audit) = 0;

  // ---- Intake ----
  // Inserts `row` (state RECEIVED, next_attempt_at_ms = received_at_ms), records the
  // operator certificate as seen and writes `audit`, all in one transaction; or reports why
  // not. Recording an operator writes (and locks) its row only on first sight and when its
  // last-seen time is a minute old, so submissions of one operator do not serialise.
  // With `claim`, the inserted row is leased to it (claimed_by, claimed_until_ms) in the same
  // statement, and the result carries the row's claim facts: the forwarder takes the row
  // from intake without a claim of its own.
  virtual absl::StatusOr<IntakeResult> Intake(const SubmissionRecord& row, const AuditEntry& audit,
                                              const std::optional<IntakeClaim>& claim) = 0;
  // Intake without a claim.
  absl::StatusOr<InsertOutcome> InsertSubmission(const SubmissionRecord& row,
                                                 const AuditEntry& audit) {
    absl::StatusOr<IntakeResult> result = Intake(row, audit, std::nullopt);
    if (!result.ok()) return result.status();
    return result->outcome;
  }
  virtual absl::StatusOr<std::optional<SubmissionRecord>> GetSubmission(
      const std::string& submission_id) = 0;
  // Oldest first, after `after` when given; `state` empty for all.
  virtual absl::StatusOr<std::vector<SubmissionRecord>> ListSubmissions(
      std::optional<SubmissionState> state, size_t limit,
      const std::optional<QueueCursor>& after) = 0;
  virtual absl::StatusOr<QueueCounts> CountSubmissions() = 0;

  // ---- Forwarder ----
  // Leases up to `limit` RECEIVED rows with next_attempt_at_ms <= now_ms whose lease is
  // free or expired, oldest first, to `claim_token` until `lease_until_ms`. Each row comes
  // with its ClaimFacts.
  virtual absl::StatusOr<std::vector<SubmissionRecord>> ClaimDue(const std::string& claim_token,
                                                                 int64_t now_ms,
                                                                 int64_t lease_until_ms,
                                                                 int limit) = 0;
  // Every RECEIVED row becomes due at `now_ms` (an admin's "forward now"). Returns how many.
  virtual absl::StatusOr<uint64_t> MakeAllDue(int64_t now_ms) = 0;

  // The three ways an attempt ends. Each counts the attempt and releases the lease; each
  // returns false (and changes nothing) when `claim_token` no longer holds the row.
  virtual absl::StatusOr<bool> FinishForwarded(const std::string& submission_id,
                                               const std::string& claim_token, int64_t now_ms,
                                               const AuditEntry& audit) = 0;
  // FinishForwarded for several rows in one transaction: one answer per row, in order,
  // each what FinishForwarded would answer; an error only when the write itself failed
  // (nothing changed). Each audit entry is written as given (its request id included). The
  // default finishes the rows one by one.
  struct ForwardedFinish {
    std::string submission_id;
    std::string claim_token;
    int64_t now_ms = 0;
    AuditEntry audit;
  };
  virtual absl::StatusOr<std::vector<absl::StatusOr<bool>>> FinishForwardedMany(
      std::span<const ForwardedFinish> rows);
  virtual absl::StatusOr<bool> FinishRejected(const std::string& submission_id,
                                              const std::string& claim_token,
                                              const std::string& reason,
                                              const AuditEntry& audit) = 0;
  // A package superseded before it was sent: REJECTED with `reason` and `audit`, like
  // FinishRejected — but only if another row for the same SN with a later created_at is
  // RECEIVED or FORWARDED (a newer package replaces it at KMS). False, changing nothing,
  // when there is none or the claim no longer holds the row.
  virtual absl::StatusOr<bool> FinishSupersededIfNewer(const std::string& submission_id,
                                                       const std::string& claim_token,
                                                       const std::string& reason,
                                                       const AuditEntry& audit) = 0;
  virtual absl::StatusOr<bool> FinishRetryLater(const std::string& submission_id,
                                                const std::string& claim_token,
                                                const std::string& last_error,
                                                int64_t next_attempt_at_ms) = 0;

  // ---- Audit ----
  // For events that change nothing else (refused packages, refused provisioning).
  virtual absl::Status AppendAudit(const AuditEntry& audit) = 0;
  // Newest first.
  virtual absl::StatusOr<std::vector<AuditEntry>> ListAudit(size_t limit) = 0;

  // ---- Refusal counts (docs/mtms.md "Bounded state") ----
  // Adds the counts to refusal_counts (one statement; rows of the same key add up).
  virtual absl::Status AddRefusalCounts(const std::vector<audit::RefusalCount>& counts) = 0;
  virtual absl::StatusOr<std::vector<audit::RefusalCount>> ListRefusalCounts() = 0;
  // Deletes the counts of minutes that began before `before_ms`; returns how many rows.
  virtual absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) = 0;
};

}  // namespace rkl::mtms
