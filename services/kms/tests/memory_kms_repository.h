#pragma once
// MemoryKmsRepository: KmsRepository in process memory for unit tests of KmsCore. It keeps
// the same contract as PgKmsRepository (optimistic versions, compare-and-set sessions,
// unique TMK index per terminal), so the core suite runs unchanged against both.
// Thread-safe (one mutex).

#include <map>

#include "absl/synchronization/mutex.h"
#include "kms_repository.h"
#include "rkl/testing/memory_refusal_counts.h"

namespace rkl::kms::testing {

class MemoryKmsRepository final : public KmsRepository {
 public:
  absl::StatusOr<TerminalRecord> GetTerminal(const std::string& sn) override;
  absl::Status InsertTerminal(const TerminalRecord& terminal,
                              const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<bool>> InsertFirstTransportKeys(
      std::span<const FirstTransportKey> rows) override;
  absl::StatusOr<bool> UpdateTerminalAndMoveSession(const TerminalRecord& terminal,
                                                    const std::vector<AuditEntry>& audit,
                                                    const SessionMove& move) override;
  absl::Status UpdateTerminal(const TerminalRecord& terminal, bool cancel_sessions,
                              const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<TerminalRecord>> ListTerminals(const TerminalFilter& filter) override;
  absl::Status InsertSession(const AuthSession& session,
                             const std::vector<AuditEntry>& audit) override;
  absl::Status UpdateTerminalAndInsertSession(const TerminalRecord& terminal,
                                              const std::vector<AuditEntry>& audit,
                                              const AuthSession& session) override;
  absl::StatusOr<AuthSession> GetSession(const std::string& id) override;
  absl::StatusOr<bool> TransitionSession(const std::string& id, SessionState from, SessionState to,
                                         const std::optional<std::string>& tmk_kcv) override;
  absl::StatusOr<ProofAttempt> ChargeProofAttempt(const std::string& sn,
                                                  const ProofAttemptPolicy& policy) override;
  absl::Status RefundProofAttempt(const std::string& sn, int64_t now_ms) override;
  absl::StatusOr<int64_t> PurgeSessions(int64_t expired_before_ms) override;
  absl::Status AddRefusalCounts(const std::vector<RefusalCount>& counts) override;
  absl::StatusOr<std::vector<RefusalCount>> ListRefusalCounts() override;
  absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) override;
  absl::Status AppendAudit(const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<AuditEntry>> ListAudit(const std::string& sn, uint64_t after_seq,
                                                    int limit) override;
  absl::StatusOr<Statistics> GetStatistics(
      const std::vector<std::string>& failure_actions) override;
  absl::Status InsertKdhKey(const KdhKeyRecord& key, const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<KdhKeyRecord>> ListKdhKeys() override;
  absl::StatusOr<KdhKeyRecord> GetActiveKdhKey() override;

 private:
  void Append(const std::vector<AuditEntry>& audit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status UpdateLocked(const TerminalRecord& terminal, bool cancel_sessions,
                            const std::vector<AuditEntry>& audit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::map<std::string, TerminalRecord> terminals_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AuthSession> sessions_ ABSL_GUARDED_BY(mu_);
  rkl::testing::MemoryRefusalCounts refusal_counts_;
  std::vector<AuditEntry> audit_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, KdhKeyRecord> kdh_keys_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> retry_after_ms_ ABSL_GUARDED_BY(mu_);  // terminals.retry_after_ms
};

}  // namespace rkl::kms::testing
