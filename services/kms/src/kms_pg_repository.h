#pragma once
// PgKmsRepository: KmsRepository on PostgreSQL (schema: services/kms/migrations). Every
// query is a named, parameterised constant in kms_pg_repository.cc; every method is one
// transaction (rkl::db::RunInTransaction, retried on serialization failures). Optimistic
// terminal writes use the row's `version`; session steps are single UPDATE ... WHERE
// state = <from> statements, so concurrent replicas cannot both win one step.
// Thread-safe; the pool must outlive the repository.

#include <utility>

#include "kms_repository.h"
#include "rkl/audit/audit_log.h"
#include "rkl/audit/pg_service_repository.h"
#include "rkl/audit/service_chain.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::kms {

// KMS's audit chain (tables audit, audit_pending; "kms" as the domain of its MACs and
// anchors): the HSM's format and verifier, under KMS's own audit MAC key.
inline audit::ChainSpec KmsAuditChain() {
  return audit::ServiceChainSpec("kms", 0x524B4C4B);  // lock class "RKLK"
}

// The channel on which a terminal's transport key arriving is notified (payload: the SN), in
// the statement that stores it, so it is heard at that commit and never for a rolled-back
// one: a first TK (InsertTerminal, InsertFirstTransportKeys) and a new TK that supersedes one or
// ends a re-key mark (UpdateTerminal). TkWaiters listens on it.
inline constexpr char kTkArrivalChannel[] = "rkl_kms_tk";

// The audit chain and the refusal counts are audit::PgServiceRepository's.
class PgKmsRepository final : public audit::PgServiceRepository<KmsRepository> {
 public:
  // Every audit entry is written as a pending record of KMS's chain, MACed under
  // `audit_key` (audit.mac_key_file), in the same statement as the change it describes.
  PgKmsRepository(db::ConnectionPool& pool, crypto::SecretBytes audit_key)
      : PgServiceRepository(pool, std::move(audit_key), KmsAuditChain()) {}

  absl::StatusOr<TerminalRecord> GetTerminal(const std::string& sn) override;
  absl::Status InsertTerminal(const TerminalRecord& terminal,
                              const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<bool>> InsertFirstTransportKeys(
      std::span<const FirstTransportKey> rows) override;
  absl::Status UpdateTerminal(const TerminalRecord& terminal, bool cancel_sessions,
                              const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<bool> UpdateTerminalAndMoveSession(const TerminalRecord& terminal,
                                                    const std::vector<AuditEntry>& audit,
                                                    const SessionMove& move) override;
  absl::StatusOr<std::vector<TerminalRecord>> ListTerminals(const TerminalFilter& filter) override;
  absl::Status InsertSession(const AuthSession& session,
                             const std::vector<AuditEntry>& audit) override;
  absl::Status UpdateTerminalAndInsertSession(const TerminalRecord& terminal,
                                              const std::vector<AuditEntry>& audit,
                                              const AuthSession& session) override;
  absl::StatusOr<AuthSession> GetSession(const std::string& id) override;
  absl::StatusOr<SessionAndTerminal> GetSessionAndTerminal(const std::string& id,
                                                           const std::string& sn) override;
  absl::StatusOr<std::optional<SessionAndTerminal>> ClaimSessionAndGetTerminal(
      const std::string& id, const std::string& sn, SessionState from, SessionState to,
      int64_t now_ms) override;
  absl::StatusOr<std::optional<ClaimedAttempt>> ClaimSessionAndChargeAttempt(
      const std::string& id, const std::string& sn, SessionState from, SessionState to,
      const ProofPrecondition& pre, const ProofAttemptPolicy& policy) override;
  absl::StatusOr<bool> TransitionSession(const std::string& id, SessionState from, SessionState to,
                                         const std::optional<std::string>& tmk_kcv) override;
  absl::StatusOr<ProofAttempt> ChargeProofAttempt(const std::string& sn,
                                                  const ProofAttemptPolicy& policy) override;
  absl::Status RefundProofAttempt(const std::string& sn, int64_t now_ms) override;
  absl::StatusOr<int64_t> PurgeSessions(int64_t expired_before_ms) override;
  absl::Status AppendAudit(const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<AuditEntry>> ListAudit(const std::string& sn, uint64_t after_seq,
                                                    int limit) override;
  absl::StatusOr<Statistics> GetStatistics(
      const std::vector<std::string>& failure_actions) override;
  absl::Status InsertKdhKey(const KdhKeyRecord& key, const std::vector<AuditEntry>& audit) override;
  absl::StatusOr<std::vector<KdhKeyRecord>> ListKdhKeys() override;
  absl::StatusOr<KdhKeyRecord> GetActiveKdhKey() override;

 private:
  // The update behind both: `move` may be null; never cancel and move in one call.
  absl::StatusOr<bool> WriteTerminal(const TerminalRecord& terminal, bool cancel_sessions,
                                     const std::vector<AuditEntry>& audit, const SessionMove* move);
};

}  // namespace rkl::kms
