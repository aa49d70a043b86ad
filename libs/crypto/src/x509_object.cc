#include "rkl/crypto/x509_object.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "keys_internal.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/crypto/x509_csr.h"

namespace rkl::crypto {
namespace {

// How a value type reaches its OpenSSL object (`kObject`, a member function) and encodes it
// (`kI2d`, `kWritePem`).
template <auto kObject, auto kI2d, auto kWritePem>
struct Access {
  template <typename T>
  static auto* Object(const T& value) {
    return (value.*kObject)();
  }
  static constexpr auto I2d = kI2d;
  static constexpr auto WritePem = kWritePem;
};

template <typename T>
struct AccessOf;
template <>
struct AccessOf<Certificate> : Access<&Certificate::x509, i2d_X509, PEM_write_bio_X509> {};
template <>
struct AccessOf<Crl> : Access<&Crl::x509_crl, i2d_X509_CRL, PEM_write_bio_X509_CRL> {};
template <>
struct AccessOf<Csr> : Access<&Csr::x509_req, i2d_X509_REQ, PEM_write_bio_X509_REQ> {};

}  // namespace

template <typename T>
absl::StatusOr<T> PemOrDerCodec<T>::Parse(std::span<const uint8_t> pem_or_der) {
  return internal::DecodePemOrDer(pem_or_der, T::FromPem, T::FromDer);
}

template <typename T>
Bytes PemOrDerCodec<T>::ToDer() const {
  return internal::ToDer(AccessOf<T>::Object(static_cast<const T&>(*this)), AccessOf<T>::I2d);
}

template <typename T>
std::string PemOrDerCodec<T>::ToPem() const {
  return internal::ToPem(AccessOf<T>::Object(static_cast<const T&>(*this)), AccessOf<T>::WritePem);
}

template class PemOrDerCodec<Certificate>;
template class PemOrDerCodec<Crl>;
template class PemOrDerCodec<Csr>;

}  // namespace rkl::crypto
