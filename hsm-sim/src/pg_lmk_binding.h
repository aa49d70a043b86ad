#pragma once
// The LMK bound to the database it seals (table hsm_instance).
//
// Guarantees: BindLmkToDatabase records the LMK's KCV and the hsm_id in the database at first
// start; at every later start a different KCV (or hsm_id) is FAILED_PRECONDITION naming the
// file that was read, the KCV the database expects and the KCV of that file, so an operator
// sees at once that the wrong LMK was mounted. A KCV is public.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"

namespace rkl::hsm {

absl::Status BindLmkToDatabase(db::ConnectionPool& pool, const std::string& hsm_id,
                               const crypto::SecretBytes& lmk, const std::string& lmk_file,
                               int64_t now_ms);

}  // namespace rkl::hsm
