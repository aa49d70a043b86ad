#include "rkl/crypto/key_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rkl/common/hex.h"
#include "rkl/common/unique_fd.h"

namespace rkl::crypto {

absl::StatusOr<SecretBytes> LoadKeyFile(const std::string& path, std::string_view config_key,
                                        std::string_view what, size_t size) {
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat(std::string(config_key), " ", path, ": ", why));
  };
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) return fail("cannot be opened (missing, unreadable or a symbolic link)");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail("is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    return fail(
        absl::StrFormat("mode %04o lets group or others access it; the %s must be readable by the "
                        "daemon's user only (chmod 600 or 400)",
                        st.st_mode & 07777, std::string(what)));
  }
  // Large enough for 2*size hex digits plus line ending; anything longer is refused.
  SecretBytes buffer(4 * size);
  auto buf = buffer.RevealSecretMutable();
  size_t n = 0;
  while (n < buf.size()) {
    ssize_t r = ::read(fd.get(), buf.data() + n, buf.size() - n);
    if (r < 0) {
      return fail("cannot be read");
    }
    if (r == 0) break;
    n += static_cast<size_t>(r);
  }
  if (n == size) return buffer.Sub(0, size);
  size_t len = n;
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) --len;
  if (len != 2 * size) {
    return fail(absl::StrCat("must hold ", size, " raw bytes or ", 2 * size, " hex digits, found ",
                             n, " bytes"));
  }
  SecretBytes key(size);
  auto out = key.RevealSecretMutable();
  if (DecodeHexInto(AsString(std::span<const uint8_t>(buf.data(), len)), out).has_value()) {
    return fail(absl::StrCat(2 * size, " characters but not all hex digits"));
  }
  return key;
}

}  // namespace rkl::crypto
