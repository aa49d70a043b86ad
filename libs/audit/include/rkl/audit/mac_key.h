#pragma once
// The audit MAC key of a service that has no LMK to derive one from (KMS, MTMS): 32 random
// bytes in a file of its own (audit.mac_key_file), read like the HSM's LMK file.
//
// Guarantees:
//  - LoadAuditMacKeyFile accepts only what rkl::crypto::LoadKeyFile accepts (a regular file
//    of mode 0600/0400 holding 32 raw bytes or 64 hex digits); its errors name the setting
//    and the file, never the contents;
//  - BindAuditMacKey records the key's KCV in the chain's database at first start (table
//    <chain_table>_key) and refuses (FAILED_PRECONDITION) a later start with a key of
//    another KCV, naming both KCVs and the file — so a replica given the wrong key cannot
//    extend the chain with MACs that would later read as tampering. A KCV is public; the key
//    itself is never logged.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "rkl/audit/audit_log.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::audit {

inline constexpr size_t kAuditMacKeySize = 32;
inline constexpr char kAuditMacKeySetting[] = "audit.mac_key_file";

absl::StatusOr<crypto::SecretBytes> LoadAuditMacKeyFile(const std::string& path);

// 6 hex digits: the first 3 bytes of HMAC-SHA256(key, "RKL-AUDIT-MAC-KEY-KCV").
absl::StatusOr<std::string> AuditMacKeyKcv(const crypto::SecretBytes& key);

absl::Status BindAuditMacKey(db::ConnectionPool& pool, const ChainSpec& spec,
                             const crypto::SecretBytes& key, const std::string& key_file,
                             int64_t now_ms);

}  // namespace rkl::audit
