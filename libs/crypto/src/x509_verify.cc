#include "rkl/crypto/x509_verify.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "keys_internal.h"

namespace rkl::crypto {
namespace {

using internal::OpenSslError;

bool IsUsabilityError(int err) {
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_CERT_REVOKED:
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::Status VerifyChain(const Certificate& leaf, std::span<const Certificate> intermediates,
                         std::span<const Certificate> trusted_roots, std::span<const Crl> crls,
                         int64_t at_time) {
  if (trusted_roots.empty()) {
    return absl::InvalidArgumentError("trusted_roots: at least one root is required");
  }
  X509StorePtr store(X509_STORE_new());
  if (store == nullptr) return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_new failed");
  for (const Certificate& root : trusted_roots) {
    if (X509_STORE_add_cert(store.get(), root.x509()) != 1) {  // takes its own reference
      ERR_clear_error();                                       // a duplicate root is harmless
    }
  }
  for (const Crl& crl : crls) {
    if (X509_STORE_add_crl(store.get(), crl.x509_crl()) != 1) ERR_clear_error();
  }

  auto untrusted = internal::X509StackOf(intermediates);
  if (!untrusted.ok()) return untrusted.status();

  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), store.get(), leaf.x509(), untrusted->get()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_CTX_init failed");
  }
  unsigned long flags = X509_V_FLAG_X509_STRICT;
  if (!crls.empty()) flags |= X509_V_FLAG_CRL_CHECK;
  X509_STORE_CTX_set_flags(ctx.get(), flags);
  // Sets X509_V_FLAG_USE_CHECK_TIME: validity is judged at `at_time`, not the wall clock.
  X509_STORE_CTX_set_time(ctx.get(), 0, static_cast<time_t>(at_time));

  int rc = X509_verify_cert(ctx.get());
  if (rc == 1) {
    ERR_clear_error();
    return absl::OkStatus();
  }
  int err = X509_STORE_CTX_get_error(ctx.get());
  int depth = X509_STORE_CTX_get_error_depth(ctx.get());
  std::string subject;
  if (X509* at = X509_STORE_CTX_get_current_cert(ctx.get())) {
    subject = internal::NameToString(X509_get_subject_name(at));
  }
  ERR_clear_error();
  if (rc < 0 || err == X509_V_OK) {
    return absl::InternalError("certificate chain: verification could not run");
  }
  std::string message =
      absl::StrCat("certificate chain: ", X509_verify_cert_error_string(err), " (depth ", depth,
                   subject.empty() ? "" : ", subject " + subject, ")");
  if (IsUsabilityError(err)) return absl::FailedPreconditionError(message);
  return absl::UnauthenticatedError(message);
}

}  // namespace rkl::crypto
