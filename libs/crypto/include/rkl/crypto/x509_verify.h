#pragma once
// Certificate path validation for rkl (terminal work certificates, operator certificates,
// service certificates), over OpenSSL's X509_STORE / X509_verify_cert.
//
// What VerifyChain guarantees when it returns OK:
//  - `leaf` chains, through zero or more of `intermediates`, to one of `trusted_roots`
//    (self-signed trust anchors; no partial chains), with every signature valid;
//  - every certificate in the path is valid at `at_time` (an explicit unix time: the system
//    clock is never consulted, so callers inject their clock);
//  - RFC 5280 profile checks of X509_V_FLAG_X509_STRICT hold (critical basicConstraints on
//    CAs, keyUsage present on CAs, AKI/SKI present, ...);
//  - if `crls` is non-empty, the leaf's issuer has a CRL among them that is signed by it,
//    current at `at_time`, and does not list the leaf (X509_V_FLAG_CRL_CHECK: the leaf only;
//    rkl's issuers are trust anchors themselves).
// It does NOT check key usage, extended key usage, names or key sizes of the leaf: those are
// the caller's policy (e.g. PROTOCOL.md §2 "exactly keyEncipherment, RSA >= 2048").
//
// Status codes: FAILED_PRECONDITION when the path is sound but not usable now (expired or not
// yet valid certificate, revoked certificate, missing, expired or not-yet-valid CRL);
// UNAUTHENTICATED for everything else (unknown issuer, bad signature, profile violation).
// The message carries OpenSSL's verify error string, e.g. "certificate has expired".
// Thread-safe: builds a fresh store per call.

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"

namespace rkl::crypto {

absl::Status VerifyChain(const Certificate& leaf, std::span<const Certificate> intermediates,
                         std::span<const Certificate> trusted_roots, std::span<const Crl> crls,
                         int64_t at_time);

}  // namespace rkl::crypto
