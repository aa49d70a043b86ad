#include "ca_repository.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
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
