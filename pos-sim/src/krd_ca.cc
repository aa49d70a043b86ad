#include "krd_ca.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "files.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/sn.h"

namespace rkl::pos {
namespace {

using crypto::KeyUsage;

// 16 random bytes, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
Bytes Serial() {
  Bytes serial = crypto::RandomBytes(16);
  serial[0] = static_cast<uint8_t>((serial[0] & 0x7f) | 0x01);
  return serial;
}

}  // namespace

absl::StatusOr<KrdCa> CreateKrdCa(std::string_view name, int64_t now_unix_s) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError("--name: the KRD CA's name must be 1 to 64 characters");
  }
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::GenerateRsaKey(kKrdCaKeyBits));
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                       crypto::CertificateBuilder()
                           .SetSubjectCommonName(std::string(name))
                           .SetSerial(Serial())
                           .SetValidity(now_unix_s, now_unix_s + kTwentyYears)
                           .SetBasicConstraints(true, 0, true)
                           .SetKeyUsage(KeyUsage::kKeyCertSign | KeyUsage::kCrlSign, true)
                           .SelfSign(key));
  return KrdCa{std::move(key), std::move(cert)};
}

absl::Status WriteKrdCa(const std::string& dir, const KrdCa& ca, const crypto::SecretBytes& pin,
                        const crypto::Pkcs12WriteOptions& options) {
  const std::string card = absl::StrCat(dir, "/", kKrdCaCardFile);
  const std::string pem = absl::StrCat(dir, "/", kKrdCaCertificateFile);
  for (const std::string& path : {card, pem}) {
    if (PathExists(path)) {
      return absl::AlreadyExistsError(
          absl::StrCat("--out: ", path, " exists; a KRD CA is never overwritten"));
    }
  }
  RKL_RETURN_IF_ERROR(MakeDirectories(dir, 0700));
  RKL_ASSIGN_OR_RETURN(Bytes p12, crypto::WritePkcs12(ca.key, ca.cert, {}, "krd-ca", pin, options));
  RKL_RETURN_IF_ERROR(CreateSecretFile(card, crypto::SecretBytes::CopyOf(p12), 0600));
  const std::string text = ca.cert.ToPem();
  return WriteFileAtomically(pem, Bytes(text.begin(), text.end()), 0644);
}

absl::StatusOr<KrdCa> OpenKrdCaCard(std::span<const uint8_t> p12, const crypto::SecretBytes& pin) {
  auto contents = crypto::ReadPkcs12(p12, pin);
  if (!contents.ok()) {
    return absl::Status(contents.status().code(),
                        absl::StrCat("krd-ca-card: ", contents.status().message()));
  }
  const crypto::Certificate& cert = contents->certificate;
  if (!cert.IsCa() || !cert.HasKeyUsage() ||
      !crypto::HasAll(cert.KeyUsageBits(), KeyUsage::kKeyCertSign)) {
    return absl::FailedPreconditionError(
        "krd-ca-card: its certificate is not a CA certificate with keyCertSign (make one with "
        "`rkl-pos krd-ca init`)");
  }
  return KrdCa{std::move(contents->private_key), cert};
}

absl::StatusOr<crypto::Certificate> IssueKrdCertificate(const KrdCa& ca, std::string_view sn,
                                                        const crypto::PublicKey& device_key,
                                                        int64_t now_unix_s) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  const int64_t not_after = std::min(now_unix_s + kTwentyYears, ca.cert.NotAfter());
  if (not_after <= now_unix_s || ca.cert.NotBefore() > now_unix_s) {
    return absl::FailedPreconditionError(
        "krd-ca-card: the KRD CA certificate is not valid now; it cannot certify terminals");
  }
  return crypto::CertificateBuilder()
      .SetSubjectCommonName(std::string(sn))
      .SetSerial(Serial())
      .SetValidity(now_unix_s, not_after)
      .SetPublicKey(device_key)
      .SetBasicConstraints(false, std::nullopt, true)
      .SetKeyUsage(KeyUsage::kKeyEncipherment, true)
      .Sign(ca.cert, ca.key);
}

}  // namespace rkl::pos
