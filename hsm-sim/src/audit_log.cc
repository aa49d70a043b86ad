#include "audit_log.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <pqxx/pqxx>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/kdf.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/db/transaction.h"

namespace rkl::hsm {
namespace {

constexpr size_t kMacSize = 32;
// Any fixed number: the class of pg_advisory_xact_lock(int, int) keys used by rkl-hsm, and
// the object within it.
constexpr int kAuditLockClass = 0x524B4C48;  // "RKLH"
constexpr int kAuditLockChain = 1;

constexpr char kLockChain[] = "SELECT pg_advisory_xact_lock($1, $2)";
constexpr char kChainHead[] = "SELECT seq, mac FROM hsm_audit ORDER BY seq DESC LIMIT 1";
constexpr char kInsertRecord[] =
    "INSERT INTO hsm_audit (seq, at_ms, actor, action, sn, detail, result, mac) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
constexpr char kAllRecords[] =
    "SELECT seq, at_ms, actor, action, sn, detail, result, mac FROM hsm_audit ORDER BY seq";

void PutBigEndian(Bytes& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PutText(Bytes& out, const std::string& s) {
  PutBigEndian(out, s.size(), 4);
  out.insert(out.end(), s.begin(), s.end());
}

Bytes ToBytes(const pqxx::field& f) {
  pqxx::binarystring b(f);
  return Bytes(b.data(), b.data() + b.size());
}

absl::StatusOr<Bytes> ChainMac(const crypto::SecretBytes& key, std::span<const uint8_t> prev,
                               uint64_t seq, const AuditEvent& e) {
  Bytes data(prev.begin(), prev.end());
  Bytes record = CanonicalAuditRecord(seq, e);
  data.insert(data.end(), record.begin(), record.end());
  return HmacSha256(key, data);
}

}  // namespace

absl::StatusOr<crypto::SecretBytes> DeriveAuditKey(const crypto::SecretBytes& lmk,
                                                   const std::string& hsm_id) {
  return crypto::KdfCounterCmac(crypto::CipherFamily::kAes, lmk, "RKL-HSM-AUDIT", hsm_id, 256);
}

absl::StatusOr<Bytes> HmacSha256(const crypto::SecretBytes& key, std::span<const uint8_t> data) {
  crypto::EvpMacPtr mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  if (!mac) return absl::InternalError("HMAC unavailable");
  crypto::EvpMacCtxPtr ctx(EVP_MAC_CTX_new(mac.get()));
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  auto k = key.RevealSecret();
  Bytes out(kMacSize);
  size_t out_len = 0;
  if (!ctx || EVP_MAC_init(ctx.get(), k.data(), k.size(), params) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 || out_len != kMacSize) {
    return absl::InternalError("HMAC-SHA256 failed");
  }
  return out;
}

Bytes CanonicalAuditRecord(uint64_t seq, const AuditEvent& e) {
  Bytes out;
  PutBigEndian(out, seq, 8);
  PutBigEndian(out, static_cast<uint64_t>(e.at_ms), 8);
  PutText(out, e.actor);
  PutText(out, e.action);
  PutText(out, e.sn);
  PutText(out, e.detail);
  PutText(out, e.result);
  return out;
}

PgAuditLog::PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key)
    : pool_(pool), audit_key_(std::move(audit_key)) {}

absl::Status PgAuditLog::Append(const AuditEvent& event) {
  return db::RunInTransaction(pool_,
                              [&](pqxx::work& tx) { return AppendInTransaction(tx, event); });
}

absl::Status PgAuditLog::AppendInTransaction(pqxx::transaction_base& tx, const AuditEvent& e) {
  // The lock orders every append across threads and replicas; under READ COMMITTED the head
  // read after it sees the previous holder's committed record.
  tx.exec_params(kLockChain, kAuditLockClass, kAuditLockChain);
  pqxx::result head = tx.exec(kChainHead);
  uint64_t seq = 1;
  Bytes prev(kMacSize, 0);
  if (!head.empty()) {
    seq = head[0][0].as<uint64_t>() + 1;
    prev = ToBytes(head[0][1]);
  }
  RKL_ASSIGN_OR_RETURN(Bytes mac, ChainMac(audit_key_, prev, seq, e));
  tx.exec_params(kInsertRecord, seq, e.at_ms, e.actor, e.action, e.sn, e.detail, e.result,
                 pqxx::binarystring(mac.data(), mac.size()));
  return absl::OkStatus();
}

absl::StatusOr<AuditVerification> PgAuditLog::Verify() {
  return db::RunInReadOnlyTransaction(
      pool_, [&](pqxx::work& tx) -> absl::StatusOr<AuditVerification> {
        AuditVerification v;
        Bytes prev(kMacSize, 0);
        uint64_t expected_seq = 1;
        for (const auto& row : tx.exec(kAllRecords)) {
          uint64_t seq = row[0].as<uint64_t>();
          AuditEvent e{row[1].as<int64_t>(),     row[2].as<std::string>(),
                       row[3].as<std::string>(), row[4].as<std::string>(),
                       row[5].as<std::string>(), row[6].as<std::string>()};
          Bytes stored = ToBytes(row[7]);
          ++v.records_checked;
          RKL_ASSIGN_OR_RETURN(Bytes mac, ChainMac(audit_key_, prev, seq, e));
          bool ok = seq == expected_seq && stored.size() == mac.size() &&
                    CRYPTO_memcmp(stored.data(), mac.data(), mac.size()) == 0;
          if (!ok) {
            v.intact = false;
            v.first_broken_seq = seq;
            return v;
          }
          prev = std::move(stored);
          expected_seq = seq + 1;
        }
        return v;
      });
}

}  // namespace rkl::hsm
