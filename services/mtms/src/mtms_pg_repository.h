#pragma once
// PgMtmsRepository: MtmsRepository over PostgreSQL (schema in ../migrations). Every query is
// a named, parameterised constant in mtms_pg_repository.cc; every method is one short
// transaction through rkl::db::RunInTransaction, so none stays open across an HSM or KMS
// call. Thread-safe as the pool is. The pool is not owned and must outlive the repository.

#include "mtms_repository.h"
#include "rkl/audit/audit_log.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::mtms {

// MTMS's audit chain (tables audit, audit_pending; "mtms" as the domain of its MACs and
// anchors): the HSM's format and verifier, under MTMS's own audit MAC key.
const audit::ChainSpec& MtmsAuditChain();

class PgMtmsRepository final : public MtmsRepository {
 public:
  // Every audit entry is written as a pending record of MTMS's chain, MACed under
  // `audit_key` (audit.mac_key_file), with the change it describes.
  PgMtmsRepository(db::ConnectionPool& pool, crypto::SecretBytes audit_key);

  // The chain: its sealer, verification and anchors (main() starts and stops them).
  audit::PgAuditLog& audit_log() { return audit_; }

  absl::StatusOr<std::optional<WorkKeyRecord>> CurrentWorkKey() override;
  absl::StatusOr<std::optional<WorkKeyRecord>> FindWorkKey(const std::string& serial) override;
  absl::StatusOr<std::vector<WorkKeyRecord>> ListWorkKeys() override;
  absl::StatusOr<InstallResult> InstallWorkKey(const WorkKeyRecord& key, bool rotate,
                                               const AuditEntry& audit) override;
  absl::StatusOr<RetireResult> RetireWorkKey(const std::string& serial, bool force, int64_t now_ms,
                                             const AuditEntry& audit) override;

  absl::StatusOr<InsertOutcome> InsertSubmission(const SubmissionRecord& row,
                                                 const AuditEntry& audit) override;
  absl::StatusOr<std::optional<SubmissionRecord>> GetSubmission(
      const std::string& submission_id) override;
  absl::StatusOr<std::vector<SubmissionRecord>> ListSubmissions(
      std::optional<SubmissionState> state, size_t limit,
      const std::optional<QueueCursor>& after) override;
  absl::StatusOr<QueueCounts> CountSubmissions() override;

  absl::StatusOr<std::vector<SubmissionRecord>> ClaimDue(const std::string& claim_token,
                                                         int64_t now_ms, int64_t lease_until_ms,
                                                         int limit) override;
  absl::StatusOr<uint64_t> MakeAllDue(int64_t now_ms) override;
  absl::StatusOr<bool> FinishForwarded(const std::string& submission_id,
                                       const std::string& claim_token, int64_t now_ms,
                                       const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishSupersededIfNewer(const std::string& submission_id,
                                               const std::string& claim_token,
                                               const std::string& reason,
                                               const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishRejected(const std::string& submission_id,
                                      const std::string& claim_token, const std::string& reason,
                                      const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishRetryLater(const std::string& submission_id,
                                        const std::string& claim_token,
                                        const std::string& last_error,
                                        int64_t next_attempt_at_ms) override;

  absl::Status AppendAudit(const AuditEntry& audit) override;
  absl::StatusOr<std::vector<AuditEntry>> ListAudit(size_t limit) override;
  absl::Status AddRefusalCounts(const std::vector<audit::RefusalCount>& counts) override;
  absl::StatusOr<std::vector<audit::RefusalCount>> ListRefusalCounts() override;
  absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) override;

 private:
  // The pending id and MAC of an entry written by one of the statements.
  absl::StatusOr<audit::PgAuditLog::PreparedPending> Prepare(const AuditEntry& entry);

  db::ConnectionPool& pool_;
  audit::PgAuditLog audit_;
};

}  // namespace rkl::mtms
