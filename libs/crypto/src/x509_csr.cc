#include "rkl/crypto/x509_csr.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keys_internal.h"

namespace rkl::crypto {

using internal::OpenSslError;

absl::StatusOr<Csr> Csr::FromDer(std::span<const uint8_t> der) {
  X509ReqPtr req = internal::ParseDerExact<X509ReqPtr>(der, d2i_X509_REQ);
  if (req == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("csr: not a DER PKCS#10 request");
  }
  return Csr(std::move(req));
}

absl::StatusOr<Csr> Csr::FromPem(std::string_view pem) {
  BioPtr bio = internal::MemBio(pem);
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (req == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("csr: not a PEM CERTIFICATE REQUEST");
  }
  X509ReqPtr extra(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (extra != nullptr) return absl::InvalidArgumentError("csr: expected exactly one PEM request");
  return Csr(std::move(req));
}

absl::StatusOr<Csr> Csr::Parse(std::span<const uint8_t> pem_or_der) {
  if (internal::LooksLikePem(pem_or_der)) return FromPem(AsString(pem_or_der));
  return FromDer(pem_or_der);
}

Csr::Csr(const Csr& other) : req_(X509_REQ_dup(other.req_.get())) {}

Csr& Csr::operator=(const Csr& other) {
  if (this != &other) req_.reset(X509_REQ_dup(other.req_.get()));
  return *this;
}

Bytes Csr::ToDer() const { return internal::ToDer(req_.get(), i2d_X509_REQ); }

std::string Csr::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509_REQ(bio.get(), req_.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  return internal::BioContents(bio.get());
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

CsrBuilder& CsrBuilder::SetSubjectCommonName(std::string cn) {
  cn_ = std::move(cn);
  return *this;
}

CsrBuilder& CsrBuilder::SetSubjectOrganization(std::string organization) {
  organization_ = std::move(organization);
  return *this;
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
  // Re-parse so the object is exactly what the CA will decode.
  Bytes der = internal::ToDer(req.get(), i2d_X509_REQ);
  if (der.empty()) return OpenSslError(absl::StatusCode::kInternal, "CSR encoding failed");
  return Csr::FromDer(der);
}

}  // namespace rkl::crypto
