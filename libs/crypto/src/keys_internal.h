#pragma once
// Helpers shared by the asymmetric half of rkl::crypto (keys, rsa, ecdsa, x509, pkcs12).
// Not installed, not part of the public API.

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/openssl_ptr.h"

namespace rkl::crypto::internal {

// Status with `message` plus the reason of the last queued OpenSSL error (library reason
// strings never carry key bytes), and clears the thread's error queue so a later call does
// not report a stale error.
absl::Status OpenSslError(absl::StatusCode code, std::string_view message);

// Drops whatever OpenSSL queued; used where the error detail must not leave (decryption).
inline void ClearOpenSslErrors() { ERR_clear_error(); }

// SHA-256 fetched from OpenSSL's default providers once, for the life of the process
// (EVP_sha256() if the fetch fails): OpenSSL 3 looks the legacy EVP_sha256() object up in
// its provider store, under a lock, every time a signing context is set up with it.
const EVP_MD* Sha256();

// Read-only memory BIO over `data` (which must outlive it).
BioPtr MemBio(std::span<const uint8_t> data);
inline BioPtr MemBio(std::string_view s) { return MemBio(AsBytes(s)); }
// Everything written to a memory BIO.
std::string BioContents(BIO* bio);

// True when `data` starts (after whitespace) with a PEM armour line.
bool LooksLikePem(std::span<const uint8_t> data);

// DER-encodes `obj` with an OpenSSL i2d function; empty on failure.
template <typename T, typename I2d>
Bytes ToDer(const T* obj, I2d i2d) {
  int len = i2d(obj, nullptr);
  if (len <= 0) return {};
  Bytes out(static_cast<size_t>(len));
  unsigned char* p = out.data();
  if (i2d(obj, &p) != len) return {};
  return out;
}

// Decodes exactly one DER object into the owning pointer type `Ptr`; trailing bytes are
// rejected so that two different encodings never map to the same parsed value. Null on error.
template <typename Ptr, typename D2i>
Ptr ParseDerExact(std::span<const uint8_t> der, D2i d2i) {
  if (der.empty() || der.size() > static_cast<size_t>(INT32_MAX)) return Ptr();
  const unsigned char* p = der.data();
  Ptr obj(d2i(nullptr, &p, static_cast<long>(der.size())));
  if (obj != nullptr && p != der.data() + der.size()) obj.reset();
  return obj;
}

// Unix seconds of an ASN1_TIME (UTCTime or GeneralizedTime).
absl::StatusOr<int64_t> Asn1TimeToUnix(const ASN1_TIME* t);

// Big-endian unsigned serial → positive ASN1_INTEGER of at most 20 content octets
// (RFC 5280 §4.1.2.2). INVALID_ARGUMENT names `field`.
absl::StatusOr<Asn1IntegerPtr> SerialToAsn1(std::span<const uint8_t> serial,
                                            std::string_view field);
// ASN1_INTEGER → minimal big-endian magnitude bytes (empty for zero).
Bytes Asn1IntegerToBytes(const ASN1_INTEGER* a);

// X.509 names (implemented in x509.cc, shared with the CSR and CRL code).
// Subject with an optional O and a required CN, both 1-64 characters (ub-common-name,
// ub-organization-name); INVALID_ARGUMENT names `field`.cn / `field`.organization.
absl::StatusOr<X509NamePtr> BuildName(std::string_view cn, std::string_view organization,
                                      std::string_view field);
// First CN as UTF-8, empty if none.
std::string NameCommonName(const X509_NAME* name);
// RFC 2253 string, UTF-8 kept as is.
std::string NameToString(const X509_NAME* name);

}  // namespace rkl::crypto::internal
