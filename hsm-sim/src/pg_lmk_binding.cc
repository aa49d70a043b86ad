#include "pg_lmk_binding.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "lmk.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/transaction.h"

namespace rkl::hsm {
namespace {

// No row lock: the row is never updated, and the INSERT before this read has waited for a
// concurrent first start's row to commit. (A lock would also need UPDATE, which the runtime
// role does not hold on this table.)
constexpr char kInstance[] = "SELECT hsm_id, lmk_kcv FROM hsm_instance";
constexpr char kInsertInstance[] =
    "INSERT INTO hsm_instance (hsm_id, lmk_kcv, created_at_ms) VALUES ($1, $2, $3) "
    "ON CONFLICT (singleton) DO NOTHING";

}  // namespace

absl::Status BindLmkToDatabase(db::ConnectionPool& pool, const std::string& hsm_id,
                               const crypto::SecretBytes& lmk, const std::string& lmk_file,
                               int64_t now_ms) {
  RKL_ASSIGN_OR_RETURN(std::string kcv, LmkKcv(lmk));
  return db::RunInTransaction(pool, [&](pqxx::work& tx) -> absl::Status {
    tx.exec_params(kInsertInstance, hsm_id, kcv, now_ms);
    pqxx::row row = tx.exec1(kInstance);
    std::string db_id = row[0].as<std::string>();
    std::string db_kcv = row[1].as<std::string>();
    if (db_kcv != kcv) {
      return absl::FailedPreconditionError(absl::StrCat(
          "wrong LMK: the database of HSM '", db_id, "' was created with an LMK whose KCV is ",
          db_kcv, ", but lmk.file ", lmk_file, " holds an LMK with KCV ", kcv,
          ". Mount the LMK this HSM was initialised with; refusing to start"));
    }
    if (db_id != hsm_id) {
      return absl::FailedPreconditionError(
          absl::StrCat("hsm_id: the database belongs to HSM '", db_id,
                       "' but this daemon is configured as '", hsm_id, "'; refusing to start"));
    }
    return absl::OkStatus();
  });
}

}  // namespace rkl::hsm
