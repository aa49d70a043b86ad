#include "lmk.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/kcv.h"
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

int HexValue(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<crypto::SecretBytes> LoadLmkFile(const std::string& path) {
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("lmk.file ", path, ": ", why));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return fail("cannot be opened (missing, unreadable or a symbolic link)");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail("is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return fail(absl::StrFormat(
        "mode %04o lets group or others access it; the LMK file must be readable by the "
        "daemon's user only (chmod 600 or 400)",
        st.st_mode & 07777));
  }
  // Large enough for 64 hex digits plus line ending; anything longer is refused.
  crypto::SecretBytes buffer(128);
  auto buf = buffer.RevealSecretMutable();
  size_t n = 0;
  while (n < buf.size()) {
    ssize_t r = ::read(fd, buf.data() + n, buf.size() - n);
    if (r < 0) {
      ::close(fd);
      return fail("cannot be read");
    }
    if (r == 0) break;
    n += static_cast<size_t>(r);
  }
  ::close(fd);
  if (n == kLmkSize) return buffer.Sub(0, kLmkSize);
  size_t len = n;
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) --len;
  if (len != 2 * kLmkSize) {
    return fail(absl::StrCat("must hold 32 raw bytes or 64 hex digits, found ", n, " bytes"));
  }
  crypto::SecretBytes lmk(kLmkSize);
  auto out = lmk.RevealSecretMutable();
  for (size_t i = 0; i < kLmkSize; ++i) {
    int hi = HexValue(buf[2 * i]), lo = HexValue(buf[2 * i + 1]);
    if (hi < 0 || lo < 0) return fail("64 characters but not all hex digits");
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return lmk;
}

absl::StatusOr<std::string> LmkKcv(const crypto::SecretBytes& lmk) {
  if (lmk.size() != kLmkSize) return absl::InvalidArgumentError("lmk: must be 32 bytes");
  return crypto::KcvHex(crypto::KeyAlgorithm::kAes256, lmk);
}

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
