#include "rkl/tr34/profile.h"

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/protocol/sn.h"

namespace rkl::tr34 {
namespace {

constexpr std::string_view kInstallProofLabel = "RKL-TR34-INSTALLED";

absl::StatusOr<Bytes> InstallProofMessage(crypto::KeyAlgorithm algorithm,
                                          const crypto::SecretBytes& tmk, std::string_view sn,
                                          std::span<const uint8_t> nonce) {
  auto kcv = crypto::Kcv(algorithm, tmk);
  if (!kcv.ok()) return kcv.status();
  Bytes message;
  message.reserve(kInstallProofLabel.size() + sn.size() + kcv->size() + nonce.size());
  message.insert(message.end(), kInstallProofLabel.begin(), kInstallProofLabel.end());
  message.insert(message.end(), sn.begin(), sn.end());
  message.insert(message.end(), kcv->begin(), kcv->end());
  message.insert(message.end(), nonce.begin(), nonce.end());
  return message;
}

}  // namespace

std::string KrdIdOf(const CertId& id) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(id.der.data(), id.der.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  return ToHex(std::span<const uint8_t>(md, len));
}

absl::StatusOr<std::string> SnOfKrdCertificate(const crypto::Certificate& krd_cert) {
  std::string cn = krd_cert.SubjectCommonName();
  if (absl::Status valid = protocol::ValidateSn(cn); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "krd certificate: subject CN must be the terminal's SN (", valid.message(), ")"));
  }
  return cn;
}

absl::StatusOr<std::string> TmkHeader(crypto::KeyAlgorithm algorithm) {
  switch (algorithm) {
    case crypto::KeyAlgorithm::kAes128:
    case crypto::KeyAlgorithm::kAes256:
      return std::string("D0016K0AD00N0000");
    case crypto::KeyAlgorithm::kTdes2:
      return std::string("B0016K0TD00N0000");
  }
  return absl::InvalidArgumentError("algorithm: must be AES128, AES256 or TDES2");
}

absl::StatusOr<Bytes> InstallProof(crypto::KeyAlgorithm algorithm, const crypto::SecretBytes& tmk,
                                   std::string_view sn, std::span<const uint8_t> nonce) {
  auto message = InstallProofMessage(algorithm, tmk, sn, nonce);
  if (!message.ok()) return message.status();
  return crypto::Cmac(algorithm, tmk, *message);
}

bool VerifyInstallProof(crypto::KeyAlgorithm algorithm, const crypto::SecretBytes& tmk,
                        std::string_view sn, std::span<const uint8_t> nonce,
                        std::span<const uint8_t> proof) {
  auto message = InstallProofMessage(algorithm, tmk, sn, nonce);
  if (!message.ok()) return false;
  return crypto::CmacVerify(crypto::FamilyOf(algorithm), tmk, *message, proof);
}

}  // namespace rkl::tr34
