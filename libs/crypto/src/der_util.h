#pragma once
// The one DER/PEM/X.509 helper behind rkl::crypto's keys, certificates, CRLs and CSRs:
// decoding input (exact DER, single-block PEM, PEM-or-DER), encoding output, names, times,
// serials, extensions, key identifiers and error text. Not installed, not part of the
// public API.
//
// Every Decode* refuses with INVALID_ARGUMENT and the caller's text, and clears OpenSSL's
// error queue: the input came from a peer, the message names what was expected, and no
// stale OpenSSL error is left for a later call to report. No message here carries input
// bytes, so secret input (a PKCS#8 private key) may be decoded through DecodeDer too.

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <climits>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/openssl_ptr.h"

namespace rkl::crypto {
class Certificate;
}  // namespace rkl::crypto

namespace rkl::crypto::internal {

// ---- error text ----------------------------------------------------------------------------

// Status with `message` plus the reason of the last queued OpenSSL error (library reason
// strings never carry key bytes), and clears the thread's error queue so a later call does
// not report a stale error.
absl::Status OpenSslError(absl::StatusCode code, std::string_view message);

// Drops whatever OpenSSL queued; used where the error detail must not leave (decryption).
inline void ClearOpenSslErrors() { ERR_clear_error(); }

// ---- memory BIOs ---------------------------------------------------------------------------

// Read-only memory BIO over `data` (which must outlive it).
BioPtr MemBio(std::span<const uint8_t> data);
inline BioPtr MemBio(std::string_view s) { return MemBio(AsBytes(s)); }
// Everything written to a memory BIO.
std::string BioContents(BIO* bio);

// ---- decoding ------------------------------------------------------------------------------

// True when `data` starts (after whitespace) with a PEM armour line.
bool LooksLikePem(std::span<const uint8_t> data);

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

// ParseDerExact, refused as INVALID_ARGUMENT(`error`).
template <typename Ptr, typename D2i>
absl::StatusOr<Ptr> DecodeDer(std::span<const uint8_t> der, D2i d2i, const char* error) {
  Ptr obj = ParseDerExact<Ptr>(der, d2i);
  if (obj == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(error);
  }
  return obj;
}

// The first PEM block `read` (PEM_read_bio_X509_CRL, ...) understands, refused as
// INVALID_ARGUMENT(`error`). When `second_error` is given, a second block is refused with
// it: it would otherwise be silently ignored.
template <typename Ptr, typename ReadPem>
absl::StatusOr<Ptr> DecodePem(std::string_view pem, ReadPem read, const char* error,
                              const char* second_error = nullptr) {
  BioPtr bio = MemBio(pem);
  Ptr obj(read(bio.get(), nullptr, nullptr, nullptr));
  if (obj == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(error);
  }
  if (second_error != nullptr) {
    Ptr extra(read(bio.get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    if (extra != nullptr) return absl::InvalidArgumentError(second_error);
  }
  return obj;
}

// `from_pem` when the input starts with a PEM armour line, `from_der` otherwise.
template <typename FromPem, typename FromDer>
auto DecodePemOrDer(std::span<const uint8_t> pem_or_der, FromPem from_pem, FromDer from_der) {
  return LooksLikePem(pem_or_der) ? from_pem(AsString(pem_or_der)) : from_der(pem_or_der);
}

// ---- encoding ------------------------------------------------------------------------------

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

// PEM text of `obj` written by `write` (PEM_write_bio_X509, ...); empty on failure.
template <typename T, typename WritePem>
std::string ToPem(T* obj, WritePem write) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || write(bio.get(), obj) != 1) {
    ERR_clear_error();
    return {};
  }
  return BioContents(bio.get());
}

// What a builder returns: `obj`, just signed, encoded and decoded again by `T::FromDer`, so
// the caller holds exactly what a relying party will decode. INTERNAL "<what> encoding
// failed" if it cannot be encoded.
template <typename T, typename Obj, typename I2d>
absl::StatusOr<T> Reparse(const Obj* obj, I2d i2d, const char* what) {
  Bytes der = ToDer(obj, i2d);
  if (der.empty()) {
    return OpenSslError(absl::StatusCode::kInternal, std::string(what) + " encoding failed");
  }
  return T::FromDer(der);
}

// ---- sharing -------------------------------------------------------------------------------

// A stack holding a counted reference to each of `certs` (for X509_STORE_CTX, PKCS#12).
absl::StatusOr<X509StackPtr> X509StackOf(std::span<const Certificate> certs);

// ---- times and serials ---------------------------------------------------------------------

// Unix seconds of an ASN1_TIME (UTCTime or GeneralizedTime).
absl::StatusOr<int64_t> Asn1TimeToUnix(const ASN1_TIME* t);
// Unix seconds → ASN1_TIME (UTCTime up to 2049, GeneralizedTime after); null on failure.
inline Asn1TimePtr UnixToAsn1Time(int64_t t) {
  return Asn1TimePtr(ASN1_TIME_set(nullptr, static_cast<time_t>(t)));
}

// Big-endian unsigned serial → positive ASN1_INTEGER of at most 20 content octets
// (RFC 5280 §4.1.2.2). INVALID_ARGUMENT names `field`.
absl::StatusOr<Asn1IntegerPtr> SerialToAsn1(std::span<const uint8_t> serial,
                                            std::string_view field);
// ASN1_INTEGER → minimal big-endian magnitude bytes (empty for zero).
Bytes Asn1IntegerToBytes(const ASN1_INTEGER* a);
// The bytes of an OCTET STRING (a key identifier); empty for null.
Bytes OctetStringBytes(const ASN1_OCTET_STRING* s);

// ---- names ---------------------------------------------------------------------------------

// Subject with an optional O and a required CN, both 1-64 characters (ub-common-name,
// ub-organization-name); INVALID_ARGUMENT names `field`.cn / `field`.organization.
absl::StatusOr<X509NamePtr> BuildName(std::string_view cn, std::string_view organization,
                                      std::string_view field);
// First CN as UTF-8, empty if none.
std::string NameCommonName(const X509_NAME* name);
// RFC 2253 string, UTF-8 kept as is.
std::string NameToString(const X509_NAME* name);

// ---- extensions and keys -------------------------------------------------------------------

// The decoded extension `nid` of `obj`, read by `get_ext_d2i` (X509_get_ext_d2i,
// X509_CRL_get_ext_d2i, X509_REVOKED_get_ext_d2i), and its criticality in *critical
// (-1 absent, 0/1 present; may be null). Null when absent or undecodable.
template <typename Ptr, typename Obj, typename GetExtD2i>
Ptr DecodeExtension(const Obj* obj, GetExtD2i get_ext_d2i, int nid, int* critical) {
  int crit = -1;
  Ptr ext(static_cast<typename Ptr::pointer>(get_ext_d2i(obj, nid, &crit, nullptr)));
  if (critical != nullptr) *critical = ext != nullptr ? crit : -1;
  ERR_clear_error();
  return ext;
}

// SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 §4.2.1.2 method 1).
absl::StatusOr<Asn1OctetStringPtr> KeyIdOf(const X509* x);
// The key identifier an issuer's authorityKeyIdentifier carries: the issuer's own
// subjectKeyIdentifier when it has one, so chain building matches it exactly, else KeyIdOf.
absl::StatusOr<Asn1OctetStringPtr> IssuerKeyIdOf(X509* issuer);
// An authorityKeyIdentifier holding `key_id` only.
absl::StatusOr<AuthorityKeyIdPtr> AuthorityKeyIdFor(Asn1OctetStringPtr key_id);

// INVALID_ARGUMENT "issuer_key: does not match the issuer certificate" unless `issuer_key`
// is the private key of `issuer`'s public key.
absl::Status CheckIssuerKey(const X509* issuer, EVP_PKEY* issuer_key);

}  // namespace rkl::crypto::internal
