#include "rkl/audit/mac_key.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/key_file.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::audit {

absl::StatusOr<crypto::SecretBytes> LoadAuditMacKeyFile(const std::string& path) {
  return crypto::LoadKeyFile(path, kAuditMacKeySetting, "audit MAC key file", kAuditMacKeySize);
}

absl::StatusOr<std::string> AuditMacKeyKcv(const crypto::SecretBytes& key) {
  if (key.size() != kAuditMacKeySize) {
    return absl::InvalidArgumentError("audit MAC key: must be 32 bytes");
  }
  constexpr char kCheck[] = "RKL-AUDIT-MAC-KEY-KCV";
  RKL_ASSIGN_OR_RETURN(
      Bytes mac, HmacSha256(key, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kCheck),
                                                          sizeof(kCheck) - 1)));
  return ToHex(std::span<const uint8_t>(mac.data(), 3));
}

absl::Status BindAuditMacKey(db::ConnectionPool& pool, const ChainSpec& spec,
                             const crypto::SecretBytes& key, const std::string& key_file,
                             int64_t now_ms) {
  RKL_ASSIGN_OR_RETURN(std::string kcv, AuditMacKeyKcv(key));
  const std::string table = spec.chain_table + "_key";
  // No row lock: the row is never updated, and the INSERT has waited for a concurrent first
  // start's row to commit (the runtime role holds SELECT and INSERT only).
  const std::string insert = absl::StrCat("INSERT INTO ", table,
                                          " (kcv, created_at_ms) VALUES ($1, $2) "
                                          "ON CONFLICT (singleton) DO NOTHING");
  const std::string select = absl::StrCat("SELECT kcv FROM ", table);
  return db::RunInTransaction(pool, [&](pqxx::work& tx) -> absl::Status {
    db::Exec(tx, insert, kcv, now_ms);
    const std::string db_kcv = db::Exec1(tx, select)[0].as<std::string>();
    if (db_kcv != kcv) {
      return absl::FailedPreconditionError(absl::StrCat(
          "wrong audit MAC key: the ", spec.name, " audit chain was begun with a key whose KCV is ",
          db_kcv, ", but ", kAuditMacKeySetting, " ", key_file, " holds a key with KCV ", kcv,
          ". Mount the key this chain was begun with; refusing to start"));
    }
    return absl::OkStatus();
  });
}

}  // namespace rkl::audit
