#pragma once
// rkl::audit — the tamper-evident audit chain every service keeps (HSM, KMS, MTMS): one
// record per event (who, what, which SN, indexes and KCVs, the result), never key material.
// The same record format, MACs, sealing, verification and anchors for every service; a
// ChainSpec names the service's tables and the domain its MACs and anchors are bound to
// (docs/hsm.md, "Audit", which is the reference for the format).
//
// Guarantees of PgAuditLog (written for the HSM's tables as an example; another ChainSpec
// replaces "hsm_audit", "HSM" and "hsm" by its own names):
//  - records are append-only (a trigger refuses UPDATE/DELETE/TRUNCATE) and chained: record n
//    carries mac_n = HMAC-SHA256(audit_key, mac_{n-1} ‖ Canonical(record n)), mac_0 = 32 zero
//    bytes. Editing, deleting, inserting or reordering rows is therefore detected by
//    Verify(), which names the first record whose MAC (or sequence number) does not follow;
//  - a record commits together with the change it describes (AppendInTransaction, or
//    PreparePending for a caller's own statement), but writers do not serialize on the
//    chain: the record goes to hsm_audit_pending with a per-record MAC (HMAC-SHA256(audit_key,
//    "RKL-HSM-AUDIT-PENDING-1" ‖ [id]_8 ‖ Canonical(record))), and Seal() — run by a
//    background thread every seal_interval, and by Verify() first — moves committed pending
//    records in id order into the chain in one transaction, under a PostgreSQL advisory
//    lock so that several replicas sharing the database build one chain. Nothing holds a
//    lock across a writer's commit, so PostgreSQL can group-commit concurrent writers;
//  - a pending record whose MAC does not verify when it is sealed is replaced in the chain
//    by a record saying so (action "audit.record_tampered"), and Verify() reports the chain
//    broken at that record; pending records not yet sealed are checked by their own MAC;
//  - records of commands that change nothing (AppendGrouped) are written in groups: every
//    caller waits until its record has committed, and concurrent callers share one
//    transaction (one thread writes what has queued while the previous group committed), so
//    a burst of read-only commands costs a few commits instead of one each;
//  - anchors: Anchor() seals and then MACs the chain's head (its seq and chain MAC) into an
//    AuditAnchor, written to a file outside the database when one is configured, and by the
//    sealer every anchor interval (by the injected clock). Verify(anchor) then also reports
//    the chain broken if it no longer holds the anchored record unchanged — which is how
//    removing the newest records is found. An anchor is never written over one the chain no
//    longer holds: Anchor() refuses (FAILED_PRECONDITION), logs and audits it, and keeps the
//    file for the investigation;
//  - each record carries the request id it was written for (column request_id, '' for none):
//    Append, AppendInTransaction and AppendGrouped take the calling thread's current request
//    id (rkl/common/request_id.h) for an event that names none; PreparePending* MAC the event
//    exactly as given, so a caller writing its own statement sets the id it stores
//    (WithCurrentRequestId) or leaves it empty;
//  - thread-safe; the audit key lives in SecretBytes and never leaves this object.
// Limitations: the records after the last anchor (the tail of the chain since then, and a
// pending record before it is sealed) can be removed without a trace; so can every record
// by someone who also holds the audit key, or who can replace the anchor file with an
// older one.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rkl/audit/audit_chain.h"
#include "rkl/audit/audit_event.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/sequence_block.h"
#include "rkl/v1/common.pb.h"

namespace pqxx {
class row;
class transaction_base;
}  // namespace pqxx

namespace rkl::audit {

// The answer of every service's VerifyAuditChain RPC (HSM, KMS, MTMS).
void ToProto(const AuditVerification& v, v1::VerifyAuditChainResponse* out);

// A row of a listing of the chain (seq, at_ms, actor, action, sn, detail, result, and
// optionally a column named request_id): the record as the event it holds, with its seq
// (KMS's and MTMS's ListAudit).
AuditEvent ChainedEventFromRow(const pqxx::row& row);

class PgAuditLog : public AuditLog {
 public:
  PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key, ChainSpec spec);
  // Group writes and sealing on `writer_pool` (one or two connections of their own), so the
  // record every command waits for never queues behind the commands' own reads. Both pools
  // must outlive this object.
  PgAuditLog(db::ConnectionPool& pool, db::ConnectionPool& writer_pool,
             crypto::SecretBytes audit_key, ChainSpec spec);

  const ChainSpec& spec() const { return spec_; }
  ~PgAuditLog() override;  // Stop()s

  absl::Status Append(const AuditEvent& event) override;
  // Seals everything committed so far, then checks the whole chain and the pending records,
  // and with `anchor` that the chain holds the anchored record with the anchored MAC: a
  // chain that ends before it is reported broken at its first missing record, one whose
  // record differs at that record.
  absl::StatusOr<AuditVerification> Verify(const AuditAnchor* anchor) override;

  // Where and how often anchors are written. Call before Start().
  struct AnchorOptions {
    std::string instance_id{};  // AuditAnchor::instance_id
    // The file that holds the latest anchor (replaced atomically); empty: Anchor() only
    // returns anchors.
    std::string file{};
    // The sealer anchors when this much time has passed by `now_ms` since the last anchor;
    // zero: only when Anchor() is called.
    absl::Duration interval = absl::ZeroDuration();
    std::function<int64_t()> now_ms{};  // null: the system clock
  };
  void ConfigureAnchors(AnchorOptions options);
  // Seals, then makes an anchor of the chain's head and, when a file is configured, writes
  // it there after checking that the chain still holds the anchor the file has (if any).
  // FAILED_PRECONDITION if it does not (or the file holds something else): the file is left
  // as it is, and an audit record says so.
  absl::StatusOr<AuditAnchor> Anchor() override;
  // Anchor() if the interval has passed since the last one by the configured clock; called
  // by the sealer after each pass. Returns whether it anchored.
  absl::StatusOr<bool> AnchorIfDue();

  // Appends inside the caller's transaction (takes no lock).
  absl::Status AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& event);
  // A pending record ready to be inserted by the caller's own statement (PgKeyStore's
  // one-statement writes): its id (from the pending-id block; `tx` only when the block is
  // used up) and its MAC over id and event — the event as given, request_id included, which
  // the statement must therefore store as it is.
  struct PreparedPending {
    uint64_t id = 0;
    Bytes mac{};
  };
  absl::StatusOr<PreparedPending> PreparePending(pqxx::transaction_base& tx,
                                                 const AuditEvent& event);
  // The same for records a caller writes in one autocommit statement of its own (KMS's and
  // MTMS's data-modifying CTEs): ids are fetched on a connection of this log's, and only
  // when the block is used up. In the order of `events`.
  absl::StatusOr<std::vector<PreparedPending>> PreparePending(std::span<const AuditEvent> events);
  // The same records as the JSON array such a statement reads (jsonb_to_recordset): one
  // object per event with "ord" (its place in `events`), "id", "mac" (hex) and the event's
  // fields ("request_id" among them), as the group writes insert them.
  absl::StatusOr<std::string> PreparePendingJson(std::span<const AuditEvent> events);

  // An admin's VerifyAuditChain: `anchor_text` empty, or an anchor line of this chain
  // (INVALID_ARGUMENT if it is not one; UNAUTHENTICATED if its MAC is not this chain's).
  absl::StatusOr<AuditVerification> VerifyWithAnchorText(std::string_view anchor_text);

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
  absl::Status CheckAnchorMac(const AuditAnchor& anchor);
  absl::Status CheckChainHolds(const AuditAnchor& anchor);
  void SealerLoop(absl::Duration interval);
  absl::Status WriteGroup(const std::vector<const AuditEvent*>& events);

  db::ConnectionPool& pool_;
  db::ConnectionPool& writer_pool_;  // group writes and sealing
  const crypto::SecretBytes audit_key_;
  const ChainSpec spec_;
  struct Statements;  // the spec's tables spliced into every statement, once
  const std::unique_ptr<const Statements> sql_;
  // A pending record's id is bound into its MAC, so it is known before the INSERT: taken
  // from the pending-id sequence a block at a time, not a nextval() round trip per record.
  db::SequenceBlock pending_ids_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sealer_;

  // One anchoring at a time in this process (several replicas may each write their own).
  absl::Mutex anchor_mu_;
  AnchorOptions anchor_options_ ABSL_GUARDED_BY(anchor_mu_);
  std::optional<int64_t> last_anchor_ms_ ABSL_GUARDED_BY(anchor_mu_);

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

}  // namespace rkl::audit
