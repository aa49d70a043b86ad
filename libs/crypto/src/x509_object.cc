#include "rkl/crypto/x509_object.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keys_internal.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_csr.h"

namespace rkl::crypto {
namespace {

// The OpenSSL object behind each value type, its encoders and its names.
template <typename T>
struct Access;
template <>
struct Access<Certificate> {
  static X509* Object(const Certificate& c) { return c.x509(); }
  static constexpr auto kI2d = i2d_X509;
  static constexpr auto kWritePem = PEM_write_bio_X509;
  static X509_NAME* Subject(const Certificate& c) { return X509_get_subject_name(c.x509()); }
  static X509_NAME* Issuer(const Certificate& c) { return X509_get_issuer_name(c.x509()); }
};
template <>
struct Access<Crl> {
  static X509_CRL* Object(const Crl& c) { return c.x509_crl(); }
  static constexpr auto kI2d = i2d_X509_CRL;
  static constexpr auto kWritePem = PEM_write_bio_X509_CRL;
  static X509_NAME* Issuer(const Crl& c) { return X509_CRL_get_issuer(c.x509_crl()); }
};
template <>
struct Access<Csr> {
  static X509_REQ* Object(const Csr& c) { return c.x509_req(); }
  static constexpr auto kI2d = i2d_X509_REQ;
  static constexpr auto kWritePem = PEM_write_bio_X509_REQ;
  static X509_NAME* Subject(const Csr& c) { return X509_REQ_get_subject_name(c.x509_req()); }
};

}  // namespace

template <typename T>
absl::StatusOr<T> PemOrDerCodec<T>::Parse(std::span<const uint8_t> pem_or_der) {
  return internal::DecodePemOrDer(pem_or_der, T::FromPem, T::FromDer);
}

template <typename T>
Bytes PemOrDerCodec<T>::ToDer() const {
  return internal::ToDer(Access<T>::Object(static_cast<const T&>(*this)), Access<T>::kI2d);
}

template <typename T>
std::string PemOrDerCodec<T>::ToPem() const {
  return internal::ToPem(Access<T>::Object(static_cast<const T&>(*this)), Access<T>::kWritePem);
}

template <typename T>
std::string HasSubjectName<T>::SubjectCommonName() const {
  return internal::NameCommonName(Access<T>::Subject(static_cast<const T&>(*this)));
}

template <typename T>
std::string HasSubjectName<T>::SubjectDn() const {
  return internal::NameToString(Access<T>::Subject(static_cast<const T&>(*this)));
}

template <typename T>
std::string HasIssuerName<T>::IssuerCommonName() const {
  return internal::NameCommonName(Access<T>::Issuer(static_cast<const T&>(*this)));
}

template <typename T>
std::string HasIssuerName<T>::IssuerDn() const {
  return internal::NameToString(Access<T>::Issuer(static_cast<const T&>(*this)));
}

template class PemOrDerCodec<Certificate>;
template class PemOrDerCodec<Crl>;
template class PemOrDerCodec<Csr>;
template class HasSubjectName<Certificate>;
template class HasSubjectName<Csr>;
template class HasIssuerName<Certificate>;
template class HasIssuerName<Crl>;

}  // namespace rkl::crypto
