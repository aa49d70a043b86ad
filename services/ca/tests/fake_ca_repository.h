#pragma once
// In-memory CaRepository for the core's unit tests: same contract as PgCaRepository
// (unique serials, one-time Initialize, idempotent Revoke), no database.
// Not thread-safe; tests drive it from one thread.

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ca_repository.h"
#include "rkl/common/status_macros.h"

namespace rkl::ca {

class FakeCaRepository final : public CaRepository {
 public:
  absl::StatusOr<std::optional<std::string>> GetMasterKeyKcv() override { return kcv_; }

  absl::Status Initialize(const std::string& kcv, const std::vector<IssuerRecord>& issuers,
                          const std::vector<CertificateRecord>& certificates,
                          const std::vector<CrlRecord>& crls) override {
    ++initialize_calls;
    if (kcv_.has_value()) return absl::FailedPreconditionError("ca: already initialised");
    kcv_ = kcv;
    for (const IssuerRecord& i : issuers) issuers_.insert_or_assign(i.issuer, i);
    for (const CertificateRecord& c : certificates) certs_.insert_or_assign(c.serial_hex, c);
    for (const CrlRecord& c : crls) crls_.insert_or_assign(c.issuer, c);
    return absl::OkStatus();
  }

  absl::Status AddIssuer(const IssuerRecord& issuer, const CertificateRecord& certificate,
                         const CrlRecord& crl) override {
    if (!kcv_.has_value()) return absl::FailedPreconditionError("ca: not initialised");
    if (issuers_.contains(issuer.issuer)) {
      return absl::FailedPreconditionError("issuer: already exists");
    }
    if (certs_.contains(certificate.serial_hex)) {
      return absl::AlreadyExistsError("ca_certificates_pkey");
    }
    issuers_.insert_or_assign(issuer.issuer, issuer);
    certs_.insert_or_assign(certificate.serial_hex, certificate);
    crls_.insert_or_assign(crl.issuer, crl);
    return absl::OkStatus();
  }

  // Test hook: the state of a CA bootstrapped before `issuer` existed.
  void ForgetIssuer(IssuerId issuer) {
    issuers_.erase(issuer);
    crls_.erase(issuer);
    std::erase_if(certs_, [issuer](const auto& c) { return c.second.issuer == issuer; });
  }

  absl::StatusOr<IssuerRecord> GetIssuer(IssuerId issuer) override {
    auto it = issuers_.find(issuer);
    if (it == issuers_.end()) return absl::NotFoundError("issuer: not initialised");
    return it->second;
  }

  absl::Status InsertCertificate(const CertificateRecord& record) override {
    if (!certs_.emplace(record.serial_hex, record).second) {
      return absl::AlreadyExistsError("ca_certificates_pkey");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial_hex) override {
    auto it = certs_.find(serial_hex);
    if (it == certs_.end()) return absl::NotFoundError("serial_hex: no such certificate");
    return it->second;
  }

  absl::StatusOr<CertificateRecord> Revoke(const std::string& serial_hex, int64_t revoked_at,
                                           crypto::CrlReason reason,
                                           const CrlPublisher& publish) override {
    auto it = certs_.find(serial_hex);
    if (it == certs_.end()) return absl::NotFoundError("serial_hex: no such certificate");
    if (it->second.state == CertificateState::kRevoked) return it->second;
    CertificateRecord updated = it->second;
    updated.state = CertificateState::kRevoked;
    updated.revoked_at = revoked_at;
    updated.reason = reason;
    // Transactional: publish first against the would-be state, commit only if it succeeds.
    std::vector<RevokedEntry> revoked = RevokedOf(updated.issuer);
    revoked.push_back({serial_hex, revoked_at, reason});
    RKL_ASSIGN_OR_RETURN(std::optional<CrlRecord> crl, publish(crls_.at(updated.issuer), revoked));
    if (crl.has_value()) crls_.insert_or_assign(updated.issuer, *crl);
    it->second = updated;
    return updated;
  }

  absl::StatusOr<CrlRecord> GetCrl(IssuerId issuer) override {
    auto it = crls_.find(issuer);
    if (it == crls_.end()) return absl::NotFoundError("issuer: not initialised");
    return it->second;
  }

  absl::StatusOr<CrlRecord> PublishCrl(IssuerId issuer, const CrlPublisher& publish) override {
    RKL_ASSIGN_OR_RETURN(CrlRecord current, GetCrl(issuer));
    RKL_ASSIGN_OR_RETURN(std::optional<CrlRecord> next, publish(current, RevokedOf(issuer)));
    if (!next.has_value()) return current;
    crls_.insert_or_assign(issuer, *next);
    return *next;
  }

  absl::Status InsertRequest(const CertificateRequestRecord& request,
                             const AuditRecord& audit) override {
    if (!requests_.emplace(request.id, request).second) {
      return absl::AlreadyExistsError("ca_certificate_requests_pkey");
    }
    audit_.push_back(audit);
    return absl::OkStatus();
  }

  absl::StatusOr<CertificateRequestRecord> GetRequest(const std::string& id) override {
    auto it = requests_.find(id);
    if (it == requests_.end()) return absl::NotFoundError("request_id: no such request");
    return it->second;
  }

  absl::StatusOr<std::vector<CertificateRequestRecord>> ListRequests(bool pending_only,
                                                                     int limit) override {
    std::vector<CertificateRequestRecord> out;
    for (const auto& [id, r] : requests_) {
      if (pending_only && r.state != RequestState::kPending) continue;
      out.push_back(r);
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return a.requested_at != b.requested_at ? a.requested_at > b.requested_at : a.id < b.id;
    });
    if (out.size() > static_cast<size_t>(limit)) out.resize(static_cast<size_t>(limit));
    return out;
  }

  // Same contract as PgCaRepository, including the CHECK that nobody approves their own
  // request (a bug in the core must not slip past the fake either).
  absl::StatusOr<CertificateRequestRecord> ApproveRequest(const std::string& id,
                                                          const std::string& approver,
                                                          int64_t approved_at,
                                                          const RequestSigner& sign,
                                                          AuditRecord audit) override {
    auto it = requests_.find(id);
    if (it == requests_.end()) return absl::NotFoundError("request_id: no such request");
    RKL_ASSIGN_OR_RETURN(CertificateRecord cert, sign(it->second));
    if (approver == it->second.requested_by) {
      return absl::FailedPreconditionError("ca_certificate_requests_check");
    }
    if (it->second.state != RequestState::kPending) {
      return absl::FailedPreconditionError("request_id: the request is no longer pending");
    }
    RKL_RETURN_IF_ERROR(InsertCertificate(cert));
    it->second.state = RequestState::kIssued;
    it->second.approved_by = approver;
    it->second.approved_at = approved_at;
    it->second.serial_hex = cert.serial_hex;
    audit.serial_hex = cert.serial_hex;
    audit_.push_back(audit);
    return it->second;
  }

  absl::StatusOr<std::vector<CertificateCounts>> CountCertificates(int64_t now) override {
    std::map<Profile, CertificateCounts> by_profile;
    for (const auto& [serial, c] : certs_) {
      CertificateCounts& counts = by_profile[c.profile];
      counts.profile = c.profile;
      if (c.state == CertificateState::kRevoked) {
        ++counts.revoked;
      } else if (c.not_after < now) {
        ++counts.expired;
      } else {
        ++counts.valid;
      }
    }
    std::vector<CertificateCounts> counts;
    for (const auto& [profile, c] : by_profile) counts.push_back(c);
    return counts;
  }

  absl::StatusOr<std::vector<std::pair<IssuerId, int64_t>>> CrlNextUpdates() override {
    std::vector<std::pair<IssuerId, int64_t>> next_updates;
    for (const auto& [issuer, crl] : crls_) next_updates.emplace_back(issuer, crl.next_update);
    return next_updates;
  }

  absl::Status InsertAudit(const AuditRecord& audit) override {
    audit_.push_back(audit);
    return absl::OkStatus();
  }

  // Test access.
  std::vector<AuditRecord>& audit() { return audit_; }
  std::map<std::string, CertificateRequestRecord>& requests() { return requests_; }
  std::map<std::string, CertificateRecord>& certificates() { return certs_; }
  std::map<IssuerId, IssuerRecord>& issuers() { return issuers_; }
  void set_kcv(std::optional<std::string> kcv) { kcv_ = std::move(kcv); }
  int initialize_calls = 0;

 private:
  std::vector<RevokedEntry> RevokedOf(IssuerId issuer) const {
    std::vector<RevokedEntry> out;
    for (const auto& [serial, c] : certs_) {
      if (c.issuer == issuer && c.state == CertificateState::kRevoked) {
        out.push_back({serial, c.revoked_at, c.reason});
      }
    }
    return out;
  }

  std::optional<std::string> kcv_;
  std::map<IssuerId, IssuerRecord> issuers_;
  std::map<std::string, CertificateRecord> certs_;
  std::map<IssuerId, CrlRecord> crls_;
  std::map<std::string, CertificateRequestRecord> requests_;
  std::vector<AuditRecord> audit_;
};

}  // namespace rkl::ca
