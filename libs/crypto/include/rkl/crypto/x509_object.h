#pragma once
// What the X.509 value types (Certificate, Crl, Csr) and their builders have in common:
// reading either encoding, writing both, and the subject name a builder sets.

#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"

namespace rkl::crypto {

// Base of a value type `T` that has T::FromDer(std::span<const uint8_t>) and
// T::FromPem(std::string_view). Instantiated for Certificate, Crl and Csr only (x509_object.cc).
template <typename T>
class PemOrDerCodec {
 public:
  // PEM if the input starts with a PEM armour line, DER otherwise.
  static absl::StatusOr<T> Parse(std::span<const uint8_t> pem_or_der);

  // The DER encoding and the PEM text; empty if OpenSSL fails to encode.
  Bytes ToDer() const;
  std::string ToPem() const;
};

// Base of CertificateBuilder and CsrBuilder: the subject's CN and O.
template <typename Builder>
class SubjectNameBuilder {
 public:
  // Required, 1-64 characters.
  Builder& SetSubjectCommonName(std::string cn) {
    cn_ = std::move(cn);
    return static_cast<Builder&>(*this);
  }
  // Optional O attribute, 1-64 characters.
  Builder& SetSubjectOrganization(std::string organization) {
    organization_ = std::move(organization);
    return static_cast<Builder&>(*this);
  }

 protected:
  std::string cn_;
  std::string organization_;
};

}  // namespace rkl::crypto
