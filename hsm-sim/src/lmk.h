#pragma once
// The Local Master Key (LMK): the AES-256 key every key record of this HSM is sealed under
// (PROTOCOL §9).
//
// Guarantees:
//  - LoadLmkFile accepts only a regular file that grants no permission to group or others
//    (mode 0400/0600) holding exactly 32 raw bytes or 64 hex digits (a trailing newline is
//    allowed); anything else is FAILED_PRECONDITION naming the file and the rule, never its
//    contents. Every intermediate buffer is wiped.
// Binding the LMK to the database it seals: pg_lmk_binding.h.

#include <string>

#include "absl/status/statusor.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::hsm {

inline constexpr size_t kLmkSize = 32;

absl::StatusOr<crypto::SecretBytes> LoadLmkFile(const std::string& path);

// 6 hex digits: AES-CMAC KCV of the LMK (PROTOCOL §1).
absl::StatusOr<std::string> LmkKcv(const crypto::SecretBytes& lmk);

}  // namespace rkl::hsm
