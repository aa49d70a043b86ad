#include "bootstrap_output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"

namespace rkl::ca {
namespace {

constexpr int kPublicFileMode = 0644;
constexpr int kSecretFileMode = 0600;

absl::Status WritePem(const std::string& path, const std::string& pem) {
  return WriteNewFile(path, AsBytes(pem), kPublicFileMode);
}

absl::Status WriteKeyPair(const KeyAndCertificate& kc, const std::string& dir) {
  std::string sub = dir + "/" + IdentityDirName(kc.name);
  std::error_code ec;
  std::filesystem::create_directory(sub, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("out: cannot create ", sub));
  RKL_RETURN_IF_ERROR(WritePem(sub + "/cert.pem", kc.certificate.ToPem()));
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes key_pem, kc.key.ExportPkcs8PemSecret());
  return WriteNewFile(sub + "/key.pem", key_pem.RevealSecret(), kSecretFileMode);
}

}  // namespace

std::string IdentityDirName(const std::string& identity) {
  std::string out = identity;
  for (char& c : out) {
    if (c == ':') c = '-';
  }
  return out;
}

absl::Status WriteNewFile(const std::string& path, std::span<const uint8_t> data, int mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(path, ": already exists; not overwritten"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot be created: ", std::strerror(err)));
  }
  bool ok = ::fchmod(fd, static_cast<mode_t>(mode)) == 0;
  size_t done = 0;
  while (ok && done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  ok = ::fsync(fd) == 0 && ok;
  ok = ::close(fd) == 0 && ok;
  if (!ok) return absl::FailedPreconditionError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status CheckBootstrapOutputDir(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return absl::OkStatus();
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("out: ", dir, " is not a directory"));
  }
  if (!std::filesystem::is_empty(dir, ec) || ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("out: ", dir, " is not empty; refusing to overwrite an earlier bootstrap"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> WriteIssuerCertificate(IssuerId issuer,
                                                   const crypto::Certificate& certificate,
                                                   const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("out: cannot create ", dir));
  std::string path = absl::StrCat(dir, "/", std::string(IssuerName(issuer)), ".pem");
  RKL_RETURN_IF_ERROR(WritePem(path, certificate.ToPem()));
  return path;
}

absl::Status WriteBootstrapOutput(const BootstrapResult& result, const std::string& dir) {
  RKL_RETURN_IF_ERROR(CheckBootstrapOutputDir(dir));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("out: cannot create ", dir));
  RKL_RETURN_IF_ERROR(WritePem(dir + "/ca-bundle.pem", result.service_ca.ToPem()));
  RKL_RETURN_IF_ERROR(WritePem(dir + "/terminal-root.pem", result.terminal_root.ToPem()));
  RKL_RETURN_IF_ERROR(WritePem(dir + "/" + kKdhCaFileName, result.kdh_ca.ToPem()));
  RKL_RETURN_IF_ERROR(WritePem(dir + "/operator-ca.pem", result.operator_ca.ToPem()));
  for (const KeyAndCertificate& s : result.services) RKL_RETURN_IF_ERROR(WriteKeyPair(s, dir));
  for (const KeyAndCertificate& a : result.admins) RKL_RETURN_IF_ERROR(WriteKeyPair(a, dir));
  for (const KeyAndCertificate& c : result.custodians) RKL_RETURN_IF_ERROR(WriteKeyPair(c, dir));
  std::string card_name = result.operator_card.name.substr(std::string("operator:").size());
  return WriteNewFile(absl::StrCat(dir, "/operator-", card_name, ".p12"), result.operator_pkcs12,
                      kSecretFileMode);
}

}  // namespace rkl::ca
