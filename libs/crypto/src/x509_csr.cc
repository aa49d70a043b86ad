#include "rkl/crypto/x509_csr.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keys_internal.h"
#include "rkl/common/status_macros.h"

namespace rkl::crypto {

using internal::OpenSslError;

absl::StatusOr<Csr> Csr::FromDer(std::span<const uint8_t> der) {
  RKL_ASSIGN_OR_RETURN(X509ReqPtr req, internal::DecodeDer<X509ReqPtr>(
                                           der, d2i_X509_REQ, "csr: not a DER PKCS#10 request"));
  return Csr(std::move(req));
}

absl::StatusOr<Csr> Csr::FromPem(std::string_view pem) {
  RKL_ASSIGN_OR_RETURN(X509ReqPtr req,
                       internal::DecodePem<X509ReqPtr>(pem, PEM_read_bio_X509_REQ,
                                                       "csr: not a PEM CERTIFICATE REQUEST",
                                                       "csr: expected exactly one PEM request"));
  return Csr(std::move(req));
}

std::string Csr::SubjectCommonName() const {
  return internal::NameCommonName(X509_REQ_get_subject_name(req_.get()));
}

std::string Csr::SubjectDn() const {
  return internal::NameToString(X509_REQ_get_subject_name(req_.get()));
}

absl::StatusOr<PublicKey> Csr::GetPublicKey() const {
  EvpPkeyPtr pkey(X509_REQ_get_pubkey(req_.get()));  // counted reference
  if (pkey == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "csr.public_key: cannot be decoded");
  }
  return PublicKey::FromEvpPkey(std::move(pkey));
}

absl::Status Csr::VerifySelfSignature() const {
  EVP_PKEY* key = X509_REQ_get0_pubkey(req_.get());
  if (key == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("csr.public_key: cannot be decoded");
  }
  int rc = X509_REQ_verify(req_.get(), key);
  ERR_clear_error();
  if (rc == 1) return absl::OkStatus();
  if (rc == 0) {
    return absl::UnauthenticatedError("csr: signature does not match the subject public key");
  }
  return absl::InvalidArgumentError("csr: signature or algorithm cannot be decoded");
}

absl::StatusOr<Csr> CsrBuilder::Sign(const PrivateKey& key) const {
  auto subject = internal::BuildName(cn_, organization_, "subject");
  if (!subject.ok()) return subject.status();
  X509ReqPtr req(X509_REQ_new());
  if (req == nullptr || X509_REQ_set_version(req.get(), X509_REQ_VERSION_1) != 1 ||
      X509_REQ_set_subject_name(req.get(), subject->get()) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.evp_pkey()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "CSR assembly failed");
  }
  if (X509_REQ_sign(req.get(), key.evp_pkey(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "CSR signing failed");
  }
  // Re-parsed, so the object is exactly what the CA will decode.
  return internal::Reparse<Csr>(req.get(), i2d_X509_REQ, "CSR");
}

}  // namespace rkl::crypto
