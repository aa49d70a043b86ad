#pragma once
// PKCS#10 certificate signing requests: how MTMS asks the CA to certify the HSM work key
// (S202) and how services and operator cards request their certificates.
//
// Guarantees:
//  - a Csr always holds a parsed, DER-round-trippable request; parsing does NOT check the
//    self-signature (so a CA can report a bad one precisely): call VerifySelfSignature()
//    before trusting anything in it;
//  - copies are deep (X509_REQ has no reference count), a Csr is immutable, and const use
//    from several threads is safe;
//  - CsrBuilder signs through a PrivateKey handle and never sees key bytes.
// A CSR is public data and may be logged or stored freely.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/x509_object.h"

namespace rkl::crypto {

// Parse(), ToDer() and ToPem() come from PemOrDerCodec.
class Csr : public PemOrDerCodec<Csr> {
 public:
  // Exactly one DER CertificationRequest, no trailing bytes.
  static absl::StatusOr<Csr> FromDer(std::span<const uint8_t> der);
  // One "CERTIFICATE REQUEST" (or "NEW CERTIFICATE REQUEST") PEM block.
  static absl::StatusOr<Csr> FromPem(std::string_view pem);

  std::string SubjectCommonName() const;
  std::string SubjectDn() const;
  // INVALID_ARGUMENT if the key is neither RSA nor EC P-256.
  absl::StatusOr<PublicKey> GetPublicKey() const;

  // OK if the request is signed by the private key matching its own public key.
  // UNAUTHENTICATED "csr: signature does not match the subject public key" when a
  // well-formed signature does not verify; INVALID_ARGUMENT when the key or signature cannot
  // be decoded at all (e.g. a corrupted ECDSA DER signature or an unsupported algorithm).
  absl::Status VerifySelfSignature() const;

  // Borrowed pointer for rkl::crypto internals; do not modify.
  X509_REQ* x509_req() const { return req_.get(); }

 private:
  explicit Csr(X509ReqPtr req) : req_(std::move(req)) {}
  CopiedX509ReqPtr req_;
};

// Not thread-safe; one builder per request. SetSubjectCommonName() (required) and
// SetSubjectOrganization() come from SubjectNameBuilder.
class CsrBuilder : public SubjectNameBuilder<CsrBuilder> {
 public:
  // SHA-256 signature (RSA PKCS#1 v1.5 or ECDSA) by `key`, whose public key the request carries.
  absl::StatusOr<Csr> Sign(const PrivateKey& key) const;
};

}  // namespace rkl::crypto
