#pragma once
// The HSM's audit log: one record per command (who, what, which SN, which key indexes and
// KCVs, the result), never key material.
//
// Guarantees of PgAuditLog:
//  - records are append-only (a trigger refuses UPDATE/DELETE/TRUNCATE) and chained: record n
//    carries mac_n = HMAC-SHA256(audit_key, mac_{n-1} ‖ Canonical(record n)), mac_0 = 32 zero
//    bytes, with audit_key = KDF(LMK, "RKL-HSM-AUDIT", hsm_id, 256) (PROTOCOL §7 KDF). Editing,
//    deleting, inserting or reordering rows is therefore detected by Verify(), which names
//    the first record whose MAC (or sequence number) does not follow;
//  - appends are serialized by a transaction-scoped PostgreSQL advisory lock taken as the
//    last step of the transaction, so concurrent requests and several replicas sharing the
//    database build one chain, and a record commits together with the key change it
//    describes (AppendInTransaction);
//  - thread-safe; the audit key lives in SecretBytes and never leaves this object.
// Limitation: removing the newest records (truncating the tail) leaves a valid shorter
// chain; records_checked lets an operator compare against what they saw before.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace pqxx {
class transaction_base;
}

namespace rkl::hsm {

struct AuditEvent {
  int64_t at_ms = 0;
  std::string actor{};   // caller identity
  std::string action{};  // e.g. "translate_transport_key"
  std::string sn{};      // empty when not about one terminal
  std::string detail{};  // indexes, KCVs, error text; never key material
  std::string result{};  // "OK" or a status code name
};

struct AuditVerification {
  bool intact = true;
  uint64_t records_checked = 0;
  uint64_t first_broken_seq = 0;  // 0 when intact
};

class AuditLog {
 public:
  virtual ~AuditLog() = default;
  // Appends in a transaction of its own (records of failed commands, whose own transaction
  // rolled back).
  virtual absl::Status Append(const AuditEvent& event) = 0;
  virtual absl::StatusOr<AuditVerification> Verify() = 0;
};

// The key the chain is MACed with, derived from the LMK.
absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id);

// HMAC-SHA256; exposed for the self-test.
absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data);

// The canonical encoding a record's MAC covers: [seq]_8 ‖ [at_ms]_8 ‖ each text field as
// [len]_4 ‖ bytes, in the order actor, action, sn, detail, result.
Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& event);

class PgAuditLog : public AuditLog {
 public:
  PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key);

  absl::Status Append(const AuditEvent& event) override;
  absl::StatusOr<AuditVerification> Verify() override;

  // Appends inside the caller's transaction; call it as the transaction's last statement
  // (it takes the chain lock, held until commit).
  absl::Status AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& event);

 private:
  db::ConnectionPool& pool_;
  const crypto::SecretBytes audit_key_;
};

}  // namespace rkl::hsm
