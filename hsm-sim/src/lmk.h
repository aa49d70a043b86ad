#pragma once
// The Local Master Key (LMK): the AES-256 key every key record of this HSM is sealed under
// (PROTOCOL §9).
//
// Guarantees:
//  - LoadLmkFile accepts only a regular file that grants no permission to group or others
//    (mode 0400/0600) holding exactly 32 raw bytes or 64 hex digits (a trailing newline is
//    allowed); anything else is FAILED_PRECONDITION naming the file and the rule, never its
//    contents. Every intermediate buffer is wiped.
//  - BindLmkToDatabase records the LMK's KCV and the hsm_id in the database at first start;
//    at every later start a different KCV (or hsm_id) is FAILED_PRECONDITION naming the
//    file that was read, the KCV the database expects and the KCV of that file, so an
//    operator sees at once that the wrong LMK was mounted. A KCV is public.

#include <string>

#include "absl/status/statusor.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::hsm {

inline constexpr size_t kLmkSize = 32;

absl::StatusOr<crypto::SecretBytes> LoadLmkFile(const std::string& path);

// 6 hex digits: AES-CMAC KCV of the LMK (PROTOCOL §1).
absl::StatusOr<std::string> LmkKcv(const crypto::SecretBytes& lmk);

absl::Status BindLmkToDatabase(db::ConnectionPool& pool, const std::string& hsm_id,
                               const crypto::SecretBytes& lmk, const std::string& lmk_file,
                               int64_t now_ms);

}  // namespace rkl::hsm
