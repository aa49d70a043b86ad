#pragma once
// The HSM's audit log: one record per command (who, what, which SN, which key indexes and
// KCVs, the result), never key material.
//
// Guarantees of PgAuditLog:
//  - records are append-only (a trigger refuses UPDATE/DELETE/TRUNCATE) and chained: record n
//    carries mac_n = HMAC-SHA256(audit_key, mac_{n-1} ‖ Canonical(record n)), mac_0 = 32 zero
//    bytes, with audit_key = KDF(LMK, "RKL-HSM-AUDIT", hsm_id, 256) (PROTOCOL §7 KDF). Editing,
//    deleting, inserting or reordering rows is therefore detected by Verify(), which names
//    the first record whose MAC (or sequence number) does not follow;
//  - a record commits together with the key change it describes (AppendInTransaction), but
//    commands do not serialize on the chain: the record goes to hsm_audit_pending with a
//    per-record MAC (HMAC-SHA256(audit_key, "RKL-HSM-AUDIT-PENDING-1" ‖ [id]_8 ‖
//    Canonical(record))), and Seal() — run by a background thread every seal_interval,
//    and by Verify() first — moves committed pending records in id order into the chain
//    in one transaction, under a PostgreSQL advisory lock so that several replicas sharing
//    the database build one chain. Nothing holds a lock across a command's commit, so
//    PostgreSQL can group-commit concurrent commands;
//  - a pending record whose MAC does not verify when it is sealed is replaced in the chain
//    by a record saying so (action "audit_record_tampered"), and Verify() reports the chain
//    broken at that record; pending records not yet sealed are checked by their own MAC;
//  - records of commands that change no key (AppendGrouped) are written in groups: every
//    caller waits until its record has committed, and concurrent callers share one
//    transaction (one thread writes what has queued while the previous group committed), so
//    a burst of read-only commands costs a few commits instead of one each;
//  - thread-safe; the audit key lives in SecretBytes and never leaves this object.
// Limitations: removing the newest records (truncating the tail of the chain, or deleting a
// pending record before it is sealed — at most seal_interval old) is not detectable;
// records_checked lets an operator compare against what they saw before.

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/sequence_block.h"

namespace pqxx {
class transaction_base;
}

namespace rkl::hsm {

struct AuditEvent {
  int64_t at_ms = 0;
  std::string actor{};   // caller identity
  std::string action{};  // e.g. "translate_transport_key"
  std::string sn{};      // empty when not about one terminal
  std::string detail{};  // indexes, KCVs, error text; never key material
  std::string result{};  // "OK" or a status code name
};

struct AuditVerification {
  bool intact = true;
  uint64_t records_checked = 0;   // chained records plus pending ones
  uint64_t first_broken_seq = 0;  // 0 when intact; a pending record counts as last seq + 1
};

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  // Appends in a transaction of its own (records of failed commands, whose own transaction
  // rolled back).
  virtual absl::Status Append(const AuditEvent& event) = 0;
  virtual absl::StatusOr<AuditVerification> Verify() = 0;
};

// The key the chain is MACed with, derived from the LMK.
absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id);

// The MAC a pending record carries: HMAC-SHA256(key, "RKL-HSM-AUDIT-PENDING-1" ‖ [id]_8 ‖
// CanonicalAuditRecord(0, event)).
absl::StatusOr<Bytes> PendingAuditMac(const crypto::SecretBytes& key, uint64_t id,
                                      const AuditEvent& event);

// HMAC-SHA256; exposed for the self-test.
absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data);

// The canonical encoding a record's MAC covers: [seq]_8 ‖ [at_ms]_8 ‖ each text field as
// [len]_4 ‖ bytes, in the order actor, action, sn, detail, result.
Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& event);

class PgAuditLog : public AuditLog {
 public:
  PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key);
  // Group writes and sealing on `writer_pool` (one or two connections of their own), so the
  // record every command waits for never queues behind the commands' own reads. Both pools
  // must outlive this object.
  PgAuditLog(db::ConnectionPool& pool, db::ConnectionPool& writer_pool,
             crypto::SecretBytes audit_key);
  ~PgAuditLog() override;  // Stop()s

  absl::Status Append(const AuditEvent& event) override;
  // Seals everything committed so far, then checks the whole chain and the pending records.
  absl::StatusOr<AuditVerification> Verify() override;

  // Appends inside the caller's transaction (takes no lock).
  absl::Status AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& event);
  // A pending record ready to be inserted by the caller's own statement (PgKeyStore's
  // one-statement writes): its id (from the pending-id block; `tx` only when the block is
  // used up) and its MAC over id and event.
  struct PreparedPending {
    uint64_t id = 0;
    Bytes mac{};
  };
  absl::StatusOr<PreparedPending> PreparePending(pqxx::transaction_base& tx,
                                                 const AuditEvent& event);

  // Appends durably: returns once the records have committed, in a transaction shared with
  // the records of concurrent callers (one caller's records always share one group). The
  // group's error, if its write failed. `events` must not be empty.
  absl::Status AppendGrouped(std::span<const AuditEvent> events);
  absl::Status AppendGrouped(const AuditEvent& event) { return AppendGrouped({&event, 1}); }
  // Groups written so far (for tests and metrics).
  uint64_t groups_written();
  // Tests only: `hook` runs in the writing thread before each group is written, and
  // queued_for_test() tells how many records wait for the next group.
  void SetGroupHookForTest(std::function<void()> hook);
  size_t queued_for_test();

  // Moves every committed pending record into the chain (in batches, one transaction each).
  // Returns how many were sealed.
  absl::StatusOr<uint64_t> Seal();

  // Background sealer: Seal() every `interval`; Stop() seals once more and joins.
  void Start(absl::Duration interval);
  void Stop();

 private:
  absl::StatusOr<uint64_t> SealBatch(int limit);
  void SealerLoop(absl::Duration interval);
  absl::Status WriteGroup(const std::vector<const AuditEvent*>& events);

  db::ConnectionPool& pool_;
  db::ConnectionPool& writer_pool_;  // group writes and sealing
  const crypto::SecretBytes audit_key_;
  // A pending record's id is bound into its MAC, so it is known before the INSERT: taken
  // from hsm_audit_pending_id_seq a block at a time, not a nextval() round trip per record.
  db::SequenceBlock pending_ids_{"hsm_audit_pending_id_seq", 16};

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sealer_;

  // Group writes. Group n collects the records queued while group n-1 is written.
  absl::Mutex group_mu_;
  absl::CondVar group_cv_;
  std::vector<const AuditEvent*> group_queue_ ABSL_GUARDED_BY(group_mu_);  // next group
  uint64_t next_group_ ABSL_GUARDED_BY(group_mu_) = 1;
  uint64_t done_group_ ABSL_GUARDED_BY(group_mu_) = 0;
  bool flushing_ ABSL_GUARDED_BY(group_mu_) = false;
  std::map<uint64_t, absl::Status> group_status_ ABSL_GUARDED_BY(group_mu_);
  std::map<uint64_t, int> group_members_ ABSL_GUARDED_BY(group_mu_);  // still to collect
  uint64_t groups_written_ ABSL_GUARDED_BY(group_mu_) = 0;
  std::function<void()> group_hook_ ABSL_GUARDED_BY(group_mu_);
};

}  // namespace rkl::hsm
