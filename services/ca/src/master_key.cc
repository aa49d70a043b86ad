#include "master_key.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/common/unique_fd.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"

namespace rkl::ca {
namespace {

// Longest accepted file: 64 hex digits and a CRLF. Anything bigger is not a master key file,
// and reading it would only put more unknown bytes in memory.
constexpr size_t kMaxFileSize = 2 * MasterKey::kSize + 2;

// Decodes the file content straight into a SecretBytes, so the clear key never sits in an
// ordinary string.
absl::StatusOr<crypto::SecretBytes> DecodeKeyFile(const crypto::SecretBytes& content,
                                                  const std::string& path) {
  std::span<const uint8_t> data = content.RevealSecret();
  if (data.size() == MasterKey::kSize) return crypto::SecretBytes::CopyOf(data);
  size_t len = data.size();
  while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r')) --len;
  if (len == 2 * MasterKey::kSize) {
    crypto::SecretBytes key(MasterKey::kSize);
    if (!DecodeHexInto(AsString(data.first(len)), key.RevealSecretMutable())) return key;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("master_key_file ", path, ": must hold exactly 32 raw bytes or 64 hex digits"));
}

}  // namespace

absl::StatusOr<MasterKey> MasterKey::LoadFromFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("master_key_file ", path, ": does not exist"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("master_key_file ", path, ": cannot be opened: ", std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("master_key_file ", path, ": must be a regular file"));
  }
  // A key others can read is a key others may have copied: refuse rather than warn.
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return absl::FailedPreconditionError(
        absl::StrCat("master_key_file ", path, ": mode ", mode,
                     " lets group or others access it; chmod 600 it"));
  }
  crypto::SecretBytes content(kMaxFileSize + 1);
  size_t got = 0;
  std::span<uint8_t> buf = content.RevealSecretMutable();
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("master_key_file ", path, ": read failed: ", std::strerror(errno)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes key, DecodeKeyFile(content.Sub(0, got), path));
  return FromSecret(std::move(key));
}

absl::Status MasterKey::CreateFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0) {
    int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat("master_key_file ", path, ": already exists; not replaced"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("master_key_file ", path, ": cannot be created: ", std::strerror(err)));
  }
  crypto::SecretBytes key = crypto::RandomSecret(kSize);
  static constexpr char kDigits[] = "0123456789ABCDEF";
  crypto::SecretBytes text(2 * kSize + 1);
  std::span<uint8_t> out = text.RevealSecretMutable();
  std::span<const uint8_t> in = key.RevealSecret();
  for (size_t i = 0; i < kSize; ++i) {
    out[2 * i] = static_cast<uint8_t>(kDigits[in[i] >> 4]);
    out[2 * i + 1] = static_cast<uint8_t>(kDigits[in[i] & 0xF]);
  }
  out[2 * kSize] = '\n';
  // umask may have narrowed the mode further, never widened it; make it exactly 0600.
  if (::fchmod(fd.get(), 0600) != 0 ||
      ::write(fd.get(), out.data(), out.size()) != static_cast<ssize_t>(out.size()) ||
      ::fsync(fd.get()) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return absl::FailedPreconditionError(
        absl::StrCat("master_key_file ", path, ": write failed: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<MasterKey> MasterKey::FromSecret(crypto::SecretBytes key) {
  if (key.size() != kSize) {
    return absl::InvalidArgumentError("master key: must be 32 bytes");
  }
  RKL_ASSIGN_OR_RETURN(std::string kcv, crypto::KcvHex(crypto::CipherFamily::kAes, key));
  RKL_ASSIGN_OR_RETURN(crypto::SealingKey sealing_key, crypto::SealingKey::Create(std::move(key)));
  return MasterKey(std::move(sealing_key), std::move(kcv));
}

Bytes MasterKey::IssuerKeyAad(std::string_view issuer_name, const crypto::Certificate& cert) {
  // The name comes from a fixed set and the hash has a fixed length, so the concatenation is
  // unambiguous without a separator.
  Bytes aad(issuer_name.begin(), issuer_name.end());
  Bytes fingerprint = cert.Sha256Fingerprint();
  aad.insert(aad.end(), fingerprint.begin(), fingerprint.end());
  return aad;
}

absl::StatusOr<Bytes> MasterKey::SealIssuerKey(std::string_view issuer_name,
                                               const crypto::Certificate& issuer_certificate,
                                               const crypto::PrivateKey& key) const {
  RKL_ASSIGN_OR_RETURN(crypto::PublicKey cert_key, issuer_certificate.GetPublicKey());
  if (!(key.GetPublicKey() == cert_key)) {
    return absl::InvalidArgumentError("issuer key: does not match the issuer certificate");
  }
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes pkcs8, key.ExportPkcs8DerSecret());
  return key_.Seal(IssuerKeyAad(issuer_name, issuer_certificate), pkcs8);
}

absl::StatusOr<crypto::PrivateKey> MasterKey::OpenIssuerKey(
    std::string_view issuer_name, const crypto::Certificate& issuer_certificate,
    const Bytes& sealed) const {
  absl::StatusOr<crypto::SecretBytes> pkcs8 =
      key_.Open(IssuerKeyAad(issuer_name, issuer_certificate), sealed);
  // One message whatever failed: wrong master key, altered record, or a record moved.
  const absl::Status cannot_open = absl::InternalError(absl::StrCat(
      "issuer ", std::string(issuer_name), ": private key cannot be opened with this master key"));
  if (!pkcs8.ok()) return cannot_open;
  absl::StatusOr<crypto::PrivateKey> key = crypto::PrivateKey::FromPkcs8DerSecret(*pkcs8);
  if (!key.ok()) return cannot_open;
  absl::StatusOr<crypto::PublicKey> cert_key = issuer_certificate.GetPublicKey();
  if (!cert_key.ok() || !(key->GetPublicKey() == *cert_key)) return cannot_open;
  return key;
}

}  // namespace rkl::ca
