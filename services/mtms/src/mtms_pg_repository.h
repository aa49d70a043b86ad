#pragma once
// PgMtmsRepository: MtmsRepository over PostgreSQL (schema in ../migrations). Every query is
// a named, parameterised constant in mtms_pg_repository.cc; every method is one short
// transaction through rkl::db::RunInTransaction, so none stays open across an HSM or KMS
// call. Thread-safe as the pool is. The pool is not owned and must outlive the repository.

#include <utility>

#include "mtms_repository.h"
#include "rkl/audit/audit_log.h"
#include "rkl/audit/pg_service_repository.h"
#include "rkl/audit/service_chain.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::mtms {

// MTMS's audit chain (tables audit, audit_pending; "mtms" as the domain of its MACs and
// anchors): the HSM's format and verifier, under MTMS's own audit MAC key.
inline audit::ChainSpec MtmsAuditChain() {
  return audit::ServiceChainSpec("mtms", 0x524B4C4D);  // lock class "RKLM"
}

// The audit chain and the refusal counts are audit::PgServiceRepository's.
class PgMtmsRepository final : public audit::PgServiceRepository<MtmsRepository> {
 public:
  // Every audit entry is written as a pending record of MTMS's chain, MACed under
  // `audit_key` (audit.mac_key_file), with the change it describes.
  PgMtmsRepository(db::ConnectionPool& pool, crypto::SecretBytes audit_key)
      : PgServiceRepository(pool, std::move(audit_key), MtmsAuditChain()) {}

  absl::StatusOr<std::optional<WorkKeyRecord>> CurrentWorkKey() override;
  absl::StatusOr<std::optional<WorkKeyRecord>> FindWorkKey(const std::string& serial) override;
  absl::StatusOr<std::vector<WorkKeyRecord>> ListWorkKeys() override;
  absl::StatusOr<InstallResult> InstallWorkKey(const WorkKeyRecord& key, bool rotate,
                                               const AuditEntry& audit) override;
  absl::StatusOr<RetireResult> RetireWorkKey(const std::string& serial, bool force, int64_t now_ms,
                                             const AuditEntry& audit) override;

  absl::StatusOr<IntakeResult> Intake(const SubmissionRecord& row, const AuditEntry& audit,
                                      const std::optional<IntakeClaim>& claim) override;
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
  absl::StatusOr<std::vector<absl::StatusOr<bool>>> FinishForwardedMany(
      std::span<const ForwardedFinish> rows) override;
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

 private:
  // The pending id and MAC of an entry written by one of the statements.
  absl::StatusOr<audit::PgAuditLog::PreparedPending> Prepare(const AuditEntry& entry);
  // One of the finish statements (WithAudit in the .cc): the row, the claim token and the
  // statement's own value ($3), with `audit` as its pending record. Whether the row was still
  // ours to finish.
  template <typename Value>
  absl::StatusOr<bool> FinishWithAudit(const std::string& statement,
                                       const std::string& submission_id,
                                       const std::string& claim_token, const Value& value,
                                       const AuditEntry& audit);
};

}  // namespace rkl::mtms
