#include "rkl/crypto/key_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace rkl::crypto {
namespace {

int HexValue(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<SecretBytes> LoadKeyFile(const std::string& path, std::string_view config_key,
                                        std::string_view what, size_t size) {
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        absl::StrCat(std::string(config_key), " ", path, ": ", why));
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
    ssize_t r = ::read(fd, buf.data() + n, buf.size() - n);
    if (r < 0) {
      ::close(fd);
      return fail("cannot be read");
    }
    if (r == 0) break;
    n += static_cast<size_t>(r);
  }
  ::close(fd);
  if (n == size) return buffer.Sub(0, size);
  size_t len = n;
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) --len;
  if (len != 2 * size) {
    return fail(absl::StrCat("must hold ", size, " raw bytes or ", 2 * size, " hex digits, found ",
                             n, " bytes"));
  }
  SecretBytes key(size);
  auto out = key.RevealSecretMutable();
  for (size_t i = 0; i < size; ++i) {
    int hi = HexValue(buf[2 * i]), lo = HexValue(buf[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return fail(absl::StrCat(2 * size, " characters but not all hex digits"));
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

}  // namespace rkl::crypto
