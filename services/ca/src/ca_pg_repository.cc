#include "ca_pg_repository.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/transaction.h"

namespace rkl::ca {
namespace {

// ---- Queries (all parameterised) --------------------------------------------------------

constexpr char kSelectMasterKeyKcv[] = "SELECT kcv FROM ca_master_key WHERE id = 1";
constexpr char kInsertMasterKeyKcv[] =
    "INSERT INTO ca_master_key (id, kcv) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
constexpr char kInsertIssuer[] =
    "INSERT INTO ca_issuers (name, certificate_der, sealed_private_key, key_type)"
    " VALUES ($1, $2, $3, $4)";
constexpr char kInsertIssuerIfAbsent[] =
    "INSERT INTO ca_issuers (name, certificate_der, sealed_private_key, key_type)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING";
constexpr char kSelectIssuer[] =
    "SELECT certificate_der, sealed_private_key, key_type FROM ca_issuers WHERE name = $1";
constexpr char kInsertCertificate[] =
    "INSERT INTO ca_certificates (serial_hex, issuer, profile, subject_cn, not_before,"
    " not_after, certificate_der) VALUES ($1, $2, $3, $4, $5, $6, $7)";
constexpr char kCertificateColumns[] =
    "serial_hex, issuer, profile, subject_cn, not_before, not_after, certificate_der, state,"
    " COALESCE(revoked_at, 0), COALESCE(revocation_reason, 0)";
constexpr char kSelectCertificateWhere[] = " FROM ca_certificates WHERE serial_hex = $1";
constexpr char kMarkRevoked[] =
    "UPDATE ca_certificates SET state = 'revoked', revoked_at = $2, revocation_reason = $3"
    " WHERE serial_hex = $1 AND state = 'good'";
constexpr char kSelectRevokedOfIssuer[] =
    "SELECT serial_hex, revoked_at, revocation_reason FROM ca_certificates"
    " WHERE issuer = $1 AND state = 'revoked' ORDER BY revoked_at, serial_hex";
constexpr char kCrlColumns[] = "crl_number, this_update, next_update, crl_der";
constexpr char kInsertCrl[] =
    "INSERT INTO ca_crls (issuer, crl_number, this_update, next_update, crl_der)"
    " VALUES ($1, $2, $3, $4, $5)";
constexpr char kUpdateCrl[] =
    "UPDATE ca_crls SET crl_number = $2, this_update = $3, next_update = $4, crl_der = $5"
    " WHERE issuer = $1";

constexpr char kStateRevoked[] = "revoked";

// The metrics' reads: one statement each, over the CA's small tables.
constexpr char kCountCertificates[] =
    "SELECT profile, count(*) FILTER (WHERE state = 'good' AND not_after >= $1),"
    " count(*) FILTER (WHERE state = 'revoked'),"
    " count(*) FILTER (WHERE state = 'good' AND not_after < $1)"
    " FROM ca_certificates GROUP BY profile";
constexpr char kSelectCrlNextUpdates[] = "SELECT issuer, next_update FROM ca_crls";

constexpr char kRequestColumns[] =
    "id, profile, subject, csr_pem, dns_names, validity_days, requested_by, requested_at,"
    " expires_at, state, COALESCE(approved_by, ''), COALESCE(approved_at, 0),"
    " COALESCE(serial_hex, '')";
constexpr char kInsertRequest[] =
    "INSERT INTO ca_certificate_requests (id, profile, subject, csr_pem, dns_names,"
    " validity_days, requested_by, requested_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7,"
    " $8, $9)";
constexpr char kMarkRequestIssued[] =
    "UPDATE ca_certificate_requests SET state = 'issued', approved_by = $2, approved_at = $3,"
    " serial_hex = $4 WHERE id = $1 AND state = 'pending'";
constexpr char kInsertAudit[] =
    "INSERT INTO ca_audit (at, actor, action, request_id, subject, serial_hex, result, detail)"
    " VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), NULLIF($6, ''), $7, $8)";
constexpr char kStateIssued[] = "issued";

pqxx::binarystring Blob(const Bytes& bytes) {
  return pqxx::binarystring(bytes.data(), bytes.size());
}

Bytes ToBytes(const pqxx::field& field) {
  pqxx::binarystring b(field);
  return Bytes(b.data(), b.data() + b.size());
}

std::string Name(IssuerId issuer) { return std::string(IssuerName(issuer)); }

absl::StatusOr<CertificateRecord> CertificateFromRow(const pqxx::row& row) {
  CertificateRecord r;
  r.serial_hex = row[0].as<std::string>();
  RKL_ASSIGN_OR_RETURN(r.issuer, IssuerFromName(row[1].as<std::string>()));
  RKL_ASSIGN_OR_RETURN(r.profile, ProfileFromName(row[2].as<std::string>()));
  r.subject_cn = row[3].as<std::string>();
  r.not_before = row[4].as<int64_t>();
  r.not_after = row[5].as<int64_t>();
  r.certificate_der = ToBytes(row[6]);
  r.state = row[7].as<std::string>() == kStateRevoked ? CertificateState::kRevoked
                                                      : CertificateState::kGood;
  r.revoked_at = row[8].as<int64_t>();
  r.reason = static_cast<crypto::CrlReason>(row[9].as<int>());
  return r;
}

CrlRecord CrlFromRow(IssuerId issuer, const pqxx::row& row) {
  CrlRecord r;
  r.issuer = issuer;
  r.crl_number = row[0].as<uint64_t>();
  r.this_update = row[1].as<int64_t>();
  r.next_update = row[2].as<int64_t>();
  r.crl_der = ToBytes(row[3]);
  return r;
}

void InsertCertificateRow(pqxx::work& tx, const CertificateRecord& c) {
  tx.exec_params(kInsertCertificate, c.serial_hex, Name(c.issuer),
                 std::string(ProfileName(c.profile)), c.subject_cn, c.not_before, c.not_after,
                 Blob(c.certificate_der));
}

absl::StatusOr<CrlRecord> LockCrl(pqxx::work& tx, IssuerId issuer) {
  pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kCrlColumns, " FROM ca_crls WHERE issuer = $1 FOR UPDATE"),
      Name(issuer));
  if (r.empty()) {
    return absl::NotFoundError(absl::StrCat("issuer ", Name(issuer), ": CA not initialised"));
  }
  return CrlFromRow(issuer, r[0]);
}

std::vector<RevokedEntry> RevokedOf(pqxx::work& tx, IssuerId issuer) {
  std::vector<RevokedEntry> out;
  for (const pqxx::row& row : tx.exec_params(kSelectRevokedOfIssuer, Name(issuer))) {
    out.push_back({row[0].as<std::string>(), row[1].as<int64_t>(),
                   static_cast<crypto::CrlReason>(row[2].as<int>())});
  }
  return out;
}

// Runs `publish` over the locked CRL row and stores its result; returns the CRL in force.
absl::StatusOr<CrlRecord> PublishLocked(pqxx::work& tx, IssuerId issuer,
                                        const CrlPublisher& publish) {
  RKL_ASSIGN_OR_RETURN(CrlRecord current, LockCrl(tx, issuer));
  RKL_ASSIGN_OR_RETURN(std::optional<CrlRecord> next, publish(current, RevokedOf(tx, issuer)));
  if (!next.has_value()) return current;
  if (next->crl_number <= current.crl_number) {
    return absl::InternalError("crl: number must increase");
  }
  tx.exec_params(kUpdateCrl, Name(issuer), static_cast<int64_t>(next->crl_number),
                 next->this_update, next->next_update, Blob(next->crl_der));
  return *next;
}

absl::StatusOr<CertificateRequestRecord> RequestFromRow(const pqxx::row& row) {
  CertificateRequestRecord r;
  r.id = row[0].as<std::string>();
  RKL_ASSIGN_OR_RETURN(r.profile, ProfileFromName(row[1].as<std::string>()));
  r.subject = row[2].as<std::string>();
  r.csr_pem = row[3].as<std::string>();
  std::string dns = row[4].as<std::string>();
  if (!dns.empty()) r.dns_names = absl::StrSplit(dns, ',');
  r.validity_days = row[5].as<uint32_t>();
  r.requested_by = row[6].as<std::string>();
  r.requested_at = row[7].as<int64_t>();
  r.expires_at = row[8].as<int64_t>();
  r.state =
      row[9].as<std::string>() == kStateIssued ? RequestState::kIssued : RequestState::kPending;
  r.approved_by = row[10].as<std::string>();
  r.approved_at = row[11].as<int64_t>();
  r.serial_hex = row[12].as<std::string>();
  return r;
}

void InsertAuditRow(pqxx::work& tx, const AuditRecord& a) {
  tx.exec_params(kInsertAudit, a.at_ms / 1000, a.actor, a.action, a.request_id, a.subject,
                 a.serial_hex, a.result, a.detail);
}

}  // namespace

absl::StatusOr<std::optional<std::string>> PgCaRepository::GetMasterKeyKcv() {
  return db::RunInReadOnlyTransaction(
      *pool_, [](pqxx::work& tx) -> absl::StatusOr<std::optional<std::string>> {
        pqxx::result r = tx.exec(kSelectMasterKeyKcv);
        if (r.empty()) return std::optional<std::string>();
        return std::optional<std::string>(r[0][0].as<std::string>());
      });
}

absl::Status PgCaRepository::Initialize(const std::string& master_key_kcv,
                                        const std::vector<IssuerRecord>& issuers,
                                        const std::vector<CertificateRecord>& certificates,
                                        const std::vector<CrlRecord>& crls) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::Status {
    // The one-row table is the initialisation flag: whoever inserts it first initialises.
    pqxx::result inserted = tx.exec_params(kInsertMasterKeyKcv, master_key_kcv);
    if (inserted.affected_rows() != 1) {
      return absl::FailedPreconditionError(
          "ca: already initialised; refusing to replace its issuers");
    }
    for (const IssuerRecord& i : issuers) {
      tx.exec_params(kInsertIssuer, Name(i.issuer), Blob(i.certificate_der),
                     Blob(i.sealed_private_key), i.key_type);
    }
    for (const CertificateRecord& c : certificates) InsertCertificateRow(tx, c);
    for (const CrlRecord& c : crls) {
      tx.exec_params(kInsertCrl, Name(c.issuer), static_cast<int64_t>(c.crl_number), c.this_update,
                     c.next_update, Blob(c.crl_der));
    }
    return absl::OkStatus();
  });
}

absl::Status PgCaRepository::AddIssuer(const IssuerRecord& issuer,
                                       const CertificateRecord& certificate, const CrlRecord& crl) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::Status {
    if (tx.exec(kSelectMasterKeyKcv).empty()) {
      return absl::FailedPreconditionError("ca: not initialised");
    }
    pqxx::result inserted =
        tx.exec_params(kInsertIssuerIfAbsent, Name(issuer.issuer), Blob(issuer.certificate_der),
                       Blob(issuer.sealed_private_key), issuer.key_type);
    if (inserted.affected_rows() != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat(Name(issuer.issuer), ": already exists; an issuer is never replaced"));
    }
    InsertCertificateRow(tx, certificate);
    tx.exec_params(kInsertCrl, Name(crl.issuer), static_cast<int64_t>(crl.crl_number),
                   crl.this_update, crl.next_update, Blob(crl.crl_der));
    return absl::OkStatus();
  });
}

absl::StatusOr<IssuerRecord> PgCaRepository::GetIssuer(IssuerId issuer) {
  return db::RunInReadOnlyTransaction(*pool_, [&](pqxx::work& tx) -> absl::StatusOr<IssuerRecord> {
    pqxx::result r = tx.exec_params(kSelectIssuer, Name(issuer));
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("issuer ", Name(issuer), ": CA not initialised"));
    }
    return IssuerRecord{issuer, ToBytes(r[0][0]), ToBytes(r[0][1]), r[0][2].as<std::string>()};
  });
}

absl::Status PgCaRepository::InsertCertificate(const CertificateRecord& record) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::Status {
    InsertCertificateRow(tx, record);
    return absl::OkStatus();
  });
}

absl::StatusOr<CertificateRecord> PgCaRepository::GetCertificate(const std::string& serial_hex) {
  return db::RunInReadOnlyTransaction(
      *pool_, [&](pqxx::work& tx) -> absl::StatusOr<CertificateRecord> {
        pqxx::result r = tx.exec_params(
            absl::StrCat("SELECT ", kCertificateColumns, kSelectCertificateWhere), serial_hex);
        if (r.empty()) return absl::NotFoundError("serial_hex: no such certificate");
        return CertificateFromRow(r[0]);
      });
}

absl::StatusOr<CertificateRecord> PgCaRepository::Revoke(const std::string& serial_hex,
                                                         int64_t revoked_at,
                                                         crypto::CrlReason reason,
                                                         const CrlPublisher& publish) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::StatusOr<CertificateRecord> {
    pqxx::result r = tx.exec_params(
        absl::StrCat("SELECT ", kCertificateColumns, kSelectCertificateWhere, " FOR UPDATE"),
        serial_hex);
    if (r.empty()) return absl::NotFoundError("serial_hex: no such certificate");
    RKL_ASSIGN_OR_RETURN(CertificateRecord record, CertificateFromRow(r[0]));
    if (record.state == CertificateState::kRevoked) return record;
    // Lock the CRL before changing the certificate, so concurrent revocations under one
    // issuer queue here and each CRL includes all revocations committed before it.
    RKL_RETURN_IF_ERROR(LockCrl(tx, record.issuer).status());
    tx.exec_params(kMarkRevoked, serial_hex, revoked_at, static_cast<int>(reason));
    RKL_RETURN_IF_ERROR(PublishLocked(tx, record.issuer, publish).status());
    record.state = CertificateState::kRevoked;
    record.revoked_at = revoked_at;
    record.reason = reason;
    return record;
  });
}

absl::StatusOr<CrlRecord> PgCaRepository::GetCrl(IssuerId issuer) {
  return db::RunInReadOnlyTransaction(*pool_, [&](pqxx::work& tx) -> absl::StatusOr<CrlRecord> {
    pqxx::result r = tx.exec_params(
        absl::StrCat("SELECT ", kCrlColumns, " FROM ca_crls WHERE issuer = $1"), Name(issuer));
    if (r.empty()) {
      return absl::NotFoundError(absl::StrCat("issuer ", Name(issuer), ": CA not initialised"));
    }
    return CrlFromRow(issuer, r[0]);
  });
}

absl::StatusOr<CrlRecord> PgCaRepository::PublishCrl(IssuerId issuer, const CrlPublisher& publish) {
  return db::RunInTransaction(*pool_,
                              [&](pqxx::work& tx) { return PublishLocked(tx, issuer, publish); });
}

}  // namespace rkl::ca

namespace rkl::ca {

absl::Status PgCaRepository::InsertRequest(const CertificateRequestRecord& r,
                                           const AuditRecord& audit) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::Status {
    tx.exec_params(kInsertRequest, r.id, std::string(ProfileName(r.profile)), r.subject, r.csr_pem,
                   absl::StrJoin(r.dns_names, ","), static_cast<int64_t>(r.validity_days),
                   r.requested_by, r.requested_at, r.expires_at);
    InsertAuditRow(tx, audit);
    return absl::OkStatus();
  });
}

absl::StatusOr<CertificateRequestRecord> PgCaRepository::GetRequest(const std::string& id) {
  return db::RunInReadOnlyTransaction(
      *pool_, [&](pqxx::work& tx) -> absl::StatusOr<CertificateRequestRecord> {
        pqxx::result r = tx.exec_params(
            absl::StrCat("SELECT ", kRequestColumns, " FROM ca_certificate_requests WHERE id = $1"),
            id);
        if (r.empty()) return absl::NotFoundError("request_id: no such certificate request");
        return RequestFromRow(r[0]);
      });
}

absl::StatusOr<std::vector<CertificateRequestRecord>> PgCaRepository::ListRequests(
    bool pending_only, int limit) {
  return db::RunInReadOnlyTransaction(
      *pool_, [&](pqxx::work& tx) -> absl::StatusOr<std::vector<CertificateRequestRecord>> {
        pqxx::result rows =
            tx.exec_params(absl::StrCat("SELECT ", kRequestColumns, " FROM ca_certificate_requests",
                                        pending_only ? " WHERE state = 'pending'" : "",
                                        " ORDER BY requested_at DESC, id LIMIT $1"),
                           limit);
        std::vector<CertificateRequestRecord> out;
        for (const pqxx::row& row : rows) {
          RKL_ASSIGN_OR_RETURN(CertificateRequestRecord r, RequestFromRow(row));
          out.push_back(std::move(r));
        }
        return out;
      });
}

absl::StatusOr<CertificateRequestRecord> PgCaRepository::ApproveRequest(const std::string& id,
                                                                        const std::string& approver,
                                                                        int64_t approved_at,
                                                                        const RequestSigner& sign,
                                                                        AuditRecord audit) {
  return db::RunInTransaction(
      *pool_, [&](pqxx::work& tx) -> absl::StatusOr<CertificateRequestRecord> {
        pqxx::result r =
            tx.exec_params(absl::StrCat("SELECT ", kRequestColumns,
                                        " FROM ca_certificate_requests WHERE id = $1 FOR UPDATE"),
                           id);
        if (r.empty()) return absl::NotFoundError("request_id: no such certificate request");
        RKL_ASSIGN_OR_RETURN(CertificateRequestRecord request, RequestFromRow(r[0]));
        RKL_ASSIGN_OR_RETURN(CertificateRecord cert, sign(request));
        InsertCertificateRow(tx, cert);
        pqxx::result marked =
            tx.exec_params(kMarkRequestIssued, id, approver, approved_at, cert.serial_hex);
        if (marked.affected_rows() != 1) {
          return absl::FailedPreconditionError("request_id: the request is no longer pending");
        }
        audit.serial_hex = cert.serial_hex;
        InsertAuditRow(tx, audit);
        request.state = RequestState::kIssued;
        request.approved_by = approver;
        request.approved_at = approved_at;
        request.serial_hex = cert.serial_hex;
        return request;
      });
}

absl::Status PgCaRepository::InsertAudit(const AuditRecord& audit) {
  return db::RunInTransaction(*pool_, [&](pqxx::work& tx) -> absl::Status {
    InsertAuditRow(tx, audit);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<CertificateCounts>> PgCaRepository::CountCertificates(int64_t now) {
  return db::RunAutocommitRead(
      *pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<CertificateCounts>> {
        std::vector<CertificateCounts> counts;
        for (const pqxx::row& row : tx.exec_params(kCountCertificates, now)) {
          CertificateCounts c;
          RKL_ASSIGN_OR_RETURN(c.profile, ProfileFromName(row[0].as<std::string>()));
          c.valid = row[1].as<uint64_t>();
          c.revoked = row[2].as<uint64_t>();
          c.expired = row[3].as<uint64_t>();
          counts.push_back(c);
        }
        return counts;
      });
}

absl::StatusOr<std::vector<std::pair<IssuerId, int64_t>>> PgCaRepository::CrlNextUpdates() {
  return db::RunAutocommitRead(
      *pool_,
      [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<std::pair<IssuerId, int64_t>>> {
        std::vector<std::pair<IssuerId, int64_t>> next_updates;
        for (const pqxx::row& row : tx.exec(kSelectCrlNextUpdates)) {
          RKL_ASSIGN_OR_RETURN(IssuerId issuer, IssuerFromName(row[0].as<std::string>()));
          next_updates.emplace_back(issuer, row[1].as<int64_t>());
        }
        return next_updates;
      });
}

}  // namespace rkl::ca
