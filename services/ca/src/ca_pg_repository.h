#pragma once
// PgCaRepository: the CaRepository (ca_repository.h, which states the guarantees) over the
// CA's own PostgreSQL database (services/ca/migrations). Thread-safe: each call borrows its
// own pooled connection.

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ca_repository.h"
#include "rkl/db/connection_pool.h"

namespace rkl::ca {

class PgCaRepository final : public CaRepository {
 public:
  // `pool` is not owned and must outlive the repository.
  explicit PgCaRepository(db::ConnectionPool* pool) : pool_(pool) {}

  absl::StatusOr<std::optional<std::string>> GetMasterKeyKcv() override;
  absl::Status Initialize(const std::string& master_key_kcv,
                          const std::vector<IssuerRecord>& issuers,
                          const std::vector<CertificateRecord>& certificates,
                          const std::vector<CrlRecord>& crls) override;
  absl::Status AddIssuer(const IssuerRecord& issuer, const CertificateRecord& certificate,
                         const CrlRecord& crl) override;
  absl::StatusOr<IssuerRecord> GetIssuer(IssuerId issuer) override;
  absl::Status InsertCertificate(const CertificateRecord& record) override;
  absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial_hex) override;
  absl::StatusOr<CertificateRecord> Revoke(const std::string& serial_hex, int64_t revoked_at,
                                           crypto::CrlReason reason,
                                           const CrlPublisher& publish) override;
  absl::StatusOr<CrlRecord> GetCrl(IssuerId issuer) override;
  absl::StatusOr<CrlRecord> PublishCrl(IssuerId issuer, const CrlPublisher& publish) override;
  absl::Status InsertRequest(const CertificateRequestRecord& request,
                             const AuditRecord& audit) override;
  absl::StatusOr<CertificateRequestRecord> GetRequest(const std::string& id) override;
  absl::StatusOr<std::vector<CertificateRequestRecord>> ListRequests(bool pending_only,
                                                                     int limit) override;
  absl::StatusOr<CertificateRequestRecord> ApproveRequest(const std::string& id,
                                                          const std::string& approver,
                                                          int64_t approved_at,
                                                          const RequestSigner& sign,
                                                          AuditRecord audit) override;
  absl::Status InsertAudit(const AuditRecord& audit) override;
  absl::StatusOr<std::vector<CertificateCounts>> CountCertificates(int64_t now) override;
  absl::StatusOr<std::vector<std::pair<IssuerId, int64_t>>> CrlNextUpdates() override;

 private:
  db::ConnectionPool* pool_;
};

}  // namespace rkl::ca
