#pragma once
// Storage of the CA: issuers (certificate + sealed private key), every issued certificate
// with its profile, subject, validity and status, the current CRL of each issuer, the
// certificate requests of dual control and the CA's audit trail.
//
// CaRepository is the interface ca_core depends on (unit tests use a fake); PgCaRepository
// (ca_pg_repository.h) is the PostgreSQL implementation over the CA's own database
// (services/ca/migrations).
//
// Guarantees of every implementation:
//  - serial numbers are unique across the CA: inserting a taken serial is ALREADY_EXISTS and
//    changes nothing (in PostgreSQL, a primary-key constraint);
//  - Initialize() is all-or-nothing and happens once: a second call is FAILED_PRECONDITION;
//  - Revoke() and PublishCrl() serialise per issuer, so CRL numbers strictly increase and a
//    CRL always lists every certificate revoked before it was signed;
//  - only public data and sealed (AES-256-GCM) issuer keys are stored: no clear private key;
//  - ApproveRequest() issues at most once per request: under a lock on the request row it
//    re-reads it, and records the certificate, the approval and its audit record together
//    (in PostgreSQL a CHECK also refuses a request approved by its own requester);
//  - audit records are only ever inserted.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "profiles.h"
#include "rkl/audit/audit_event.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/x509_crl.h"

namespace rkl::ca {

struct IssuerRecord {
  IssuerId issuer;
  Bytes certificate_der;
  Bytes sealed_private_key;  // MasterKey::SealIssuerKey output
  std::string key_type;      // KeySpecName, for operators reading the database
};

enum class CertificateState { kGood, kRevoked };

struct CertificateRecord {
  std::string serial_hex;  // upper case, as Certificate::SerialHex()
  IssuerId issuer;
  Profile profile;
  std::string subject_cn;
  int64_t not_before = 0;  // unix seconds
  int64_t not_after = 0;
  Bytes certificate_der;
  CertificateState state = CertificateState::kGood;
  int64_t revoked_at = 0;  // unix seconds; 0 while good
  crypto::CrlReason reason = crypto::CrlReason::kUnspecified;
};

// The certificates of one profile by status at a given time (ca_metrics.h).
struct CertificateCounts {
  Profile profile = Profile::kIssuer;
  uint64_t valid = 0;    // not revoked, notAfter not passed
  uint64_t revoked = 0;  // revoked, expired or not
  uint64_t expired = 0;  // not revoked, notAfter passed
};

struct CrlRecord {
  IssuerId issuer;
  uint64_t crl_number = 0;
  int64_t this_update = 0;  // unix seconds
  int64_t next_update = 0;
  Bytes crl_der;
};

struct RevokedEntry {
  std::string serial_hex;
  int64_t revoked_at;
  crypto::CrlReason reason;
};

enum class RequestState { kPending, kIssued };

// A request for a certificate that needs a second admin's approval (dual control).
struct CertificateRequestRecord {
  std::string id{};                     // 32 upper-case hex digits
  Profile profile = Profile::kService;  // kService (services, admins, custodians) or kOperator
  std::string subject{};                // identity it will name: "kms", "admin:bob", "operator:x"
  std::string csr_pem{};
  std::vector<std::string> dns_names{};  // extra SANs (services only)
  uint32_t validity_days = 0;            // 0: policy default
  std::string requested_by{};
  int64_t requested_at = 0;  // unix seconds
  int64_t expires_at = 0;
  RequestState state = RequestState::kPending;
  std::string approved_by{};  // empty while pending
  int64_t approved_at = 0;
  std::string serial_hex{};  // the issued certificate; empty while pending
};

// One line of the CA's audit trail (table ca_audit): the entry every service writes
// (audit::AuditEvent: action from rkl/audit/actions.h, result "OK" or "<CODE>: <message>",
// at_ms stored to the second, sn unused) and the CA's own columns.
struct AuditRecord : audit::AuditEvent {
  AuditRecord(std::string actor_name, std::string action_name) {
    actor = std::move(actor_name);
    action = std::move(action_name);
    result = "OK";
  }
  std::string request_id{};
  std::string subject{};
  std::string serial_hex{};
};

// Checks a request, locked and freshly read, and signs its certificate; an error refuses the
// approval and nothing is written. May run more than once (transaction retries).
using RequestSigner =
    std::function<absl::StatusOr<CertificateRecord>(const CertificateRequestRecord& locked)>;

// Decides, under the issuer's CRL lock, whether to publish a new CRL and signs it. Gets the
// current CRL and every revoked certificate of the issuer; returns the new CRL, or nullopt
// to keep the current one. May run more than once (transaction retries): it must be pure.
using CrlPublisher = std::function<absl::StatusOr<std::optional<CrlRecord>>(
    const CrlRecord& current, const std::vector<RevokedEntry>& revoked)>;

class CaRepository {
 public:
  virtual ~CaRepository() = default;

  // KCV of the master key the issuers are sealed under; nullopt before initialisation.
  virtual absl::StatusOr<std::optional<std::string>> GetMasterKeyKcv() = 0;

  // Records, in one transaction: the master key KCV, the issuers, the certificates (issuer
  // certificates and any leaves issued at bootstrap) and each issuer's first CRL.
  // FAILED_PRECONDITION "ca: already initialised" if it was done before.
  virtual absl::Status Initialize(const std::string& master_key_kcv,
                                  const std::vector<IssuerRecord>& issuers,
                                  const std::vector<CertificateRecord>& certificates,
                                  const std::vector<CrlRecord>& crls) = 0;

  // Records an issuer an initialised CA lacks, with its certificate and first CRL, in one
  // transaction. FAILED_PRECONDITION when the CA is not initialised or already has the issuer
  // (nothing changes); ALREADY_EXISTS if the certificate's serial is taken.
  virtual absl::Status AddIssuer(const IssuerRecord& issuer, const CertificateRecord& certificate,
                                 const CrlRecord& crl) = 0;

  // NOT_FOUND when the CA is not initialised, or lacks this issuer.
  virtual absl::StatusOr<IssuerRecord> GetIssuer(IssuerId issuer) = 0;

  // ALREADY_EXISTS if the serial is taken.
  virtual absl::Status InsertCertificate(const CertificateRecord& record) = 0;
  // NOT_FOUND for an unknown serial.
  virtual absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial_hex) = 0;

  // Marks the certificate revoked and publishes its issuer's CRL through `publish`, both in
  // one transaction. An already revoked certificate is returned unchanged and `publish` is not
  // called (a retried call is harmless). NOT_FOUND for an unknown serial.
  virtual absl::StatusOr<CertificateRecord> Revoke(const std::string& serial_hex,
                                                   int64_t revoked_at, crypto::CrlReason reason,
                                                   const CrlPublisher& publish) = 0;

  // The issuer's current CRL. NOT_FOUND when the CA is not initialised.
  virtual absl::StatusOr<CrlRecord> GetCrl(IssuerId issuer) = 0;
  // Lets `publish` replace the issuer's CRL; returns the CRL in force afterwards.
  virtual absl::StatusOr<CrlRecord> PublishCrl(IssuerId issuer, const CrlPublisher& publish) = 0;

  // Stores a new pending request and its audit record together. ALREADY_EXISTS if the id is
  // taken.
  virtual absl::Status InsertRequest(const CertificateRequestRecord& request,
                                     const AuditRecord& audit) = 0;
  // NOT_FOUND for an unknown id.
  virtual absl::StatusOr<CertificateRequestRecord> GetRequest(const std::string& id) = 0;
  // Newest first, at most `limit`; only pending ones when `pending_only`.
  virtual absl::StatusOr<std::vector<CertificateRequestRecord>> ListRequests(bool pending_only,
                                                                             int limit) = 0;
  // Locks the request, runs `sign` on it, then records the certificate it returns, marks the
  // request issued by `approver` at `approved_at` (with the certificate's serial) and writes
  // `audit` (its serial_hex filled in), all in one transaction. `sign`'s error is returned
  // and nothing changes. NOT_FOUND for an unknown id; ALREADY_EXISTS for a serial collision.
  virtual absl::StatusOr<CertificateRequestRecord> ApproveRequest(const std::string& id,
                                                                  const std::string& approver,
                                                                  int64_t approved_at,
                                                                  const RequestSigner& sign,
                                                                  AuditRecord audit) = 0;

  virtual absl::Status InsertAudit(const AuditRecord& audit) = 0;

  // ---- For the metrics (ca_metrics.h); one statement each ----
  // The certificates of every profile that has any, by status at `now` (unix seconds):
  // expired once now > notAfter.
  virtual absl::StatusOr<std::vector<CertificateCounts>> CountCertificates(int64_t now) = 0;
  // The nextUpdate (unix seconds) of each issuer's current CRL; issuers without one (a CA
  // not initialised, or one that lacks the issuer) are absent.
  virtual absl::StatusOr<std::vector<std::pair<IssuerId, int64_t>>> CrlNextUpdates() = 0;
};

}  // namespace rkl::ca
