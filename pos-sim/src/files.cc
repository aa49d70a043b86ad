#include "files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rkl/common/unique_fd.h"
#include "rkl/crypto/random.h"

namespace rkl::pos {
namespace {

absl::Status ErrnoStatus(const std::string& what, const std::string& path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EEXIST) return absl::AlreadyExistsError(message);
  return absl::FailedPreconditionError(message);
}

std::atomic<bool> durable_writes{true};

absl::Status WriteAll(int fd, const uint8_t* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path, errno);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  if (DurableWrites() && ::fsync(fd) != 0) return ErrnoStatus("cannot fsync", path, errno);
  return absl::OkStatus();
}

absl::StatusOr<size_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": not a regular file"));
  }
  return static_cast<size_t>(st.st_size);
}

absl::Status ReadAll(int fd, uint8_t* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::read(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot read", path, errno);
    }
    if (n == 0) return absl::FailedPreconditionError(absl::StrCat(path, ": changed while read"));
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Bytes> ReadFileBytes(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus("cannot open", path, errno);
  auto size = FileSize(fd.get(), path);
  if (!size.ok()) return size.status();
  Bytes data(*size);
  if (auto s = ReadAll(fd.get(), data.data(), data.size(), path); !s.ok()) return s;
  return data;
}

absl::StatusOr<std::string> ReadFileText(const std::string& path) {
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return std::string(bytes->begin(), bytes->end());
}

absl::StatusOr<crypto::SecretBytes> ReadSecretFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus("cannot open", path, errno);
  auto size = FileSize(fd.get(), path);
  if (!size.ok()) return size.status();
  crypto::SecretBytes data(*size);
  auto out = data.RevealSecretMutable();
  if (auto s = ReadAll(fd.get(), out.data(), out.size(), path); !s.ok()) return s;
  return data;
}

void SetDurableWrites(bool durable) { durable_writes.store(durable); }
bool DurableWrites() { return durable_writes.load(); }

absl::Status WriteFileAtomically(const std::string& path, const Bytes& data, mode_t mode) {
  std::filesystem::path target(path);
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string tmp = absl::StrCat(path, ".tmp-", ::getpid(), "-", ToHex(crypto::RandomBytes(6)));
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
    if (fd.get() < 0) return ErrnoStatus("cannot create", tmp, errno);
    // open() applies the umask; the module's files must be exactly `mode`.
    if (::fchmod(fd.get(), mode) != 0) {
      absl::Status s = ErrnoStatus("cannot chmod", tmp, errno);
      ::unlink(tmp.c_str());
      return s;
    }
    if (auto s = WriteAll(fd.get(), data.data(), data.size(), tmp); !s.ok()) {
      ::unlink(tmp.c_str());
      return s;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus("cannot rename onto", path, errno);
    ::unlink(tmp.c_str());
    return s;
  }
  if (!DurableWrites()) return absl::OkStatus();
  // Make the rename itself durable.
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() >= 0) ::fsync(dfd.get());
  return absl::OkStatus();
}

absl::Status CreateSecretFile(const std::string& path, const crypto::SecretBytes& data,
                              mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (fd.get() < 0) return ErrnoStatus("cannot create", path, errno);
  if (::fchmod(fd.get(), mode) != 0) return ErrnoStatus("cannot chmod", path, errno);
  auto bytes = data.RevealSecret();
  return WriteAll(fd.get(), bytes.data(), bytes.size(), path);
}

absl::Status MakeDirectories(const std::string& path, mode_t mode) {
  std::error_code ec;
  std::filesystem::path p(path);
  std::filesystem::path partial;
  for (const auto& part : p) {
    partial /= part;
    if (partial.empty() || std::filesystem::is_directory(partial, ec)) continue;
    if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) {
      return ErrnoStatus("cannot create directory", partial.string(), errno);
    }
  }
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace rkl::pos
