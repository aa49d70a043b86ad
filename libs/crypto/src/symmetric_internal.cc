#include "symmetric_internal.h"

#include <openssl/err.h>

#include "absl/strings/str_cat.h"

namespace rkl::crypto::internal {

const EVP_CIPHER* FetchCipher(const char* name, const EVP_CIPHER* legacy) {
  // Never freed: the objects live as long as the process, as the legacy ones do.
  const EVP_CIPHER* fetched = EVP_CIPHER_fetch(nullptr, name, nullptr);
  if (fetched == nullptr) ERR_clear_error();
  return fetched != nullptr ? fetched : legacy;
}

absl::Status OpenSslFailure(const char* operation) {
  ERR_clear_error();
  return absl::InternalError(absl::StrCat(operation, ": OpenSSL call failed"));
}

absl::Status BadKeyLength(CipherFamily family, size_t key_length, const char* what) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": ", FamilyName(family), " key is ", key_length, " bytes; expected ",
                   family == CipherFamily::kAes ? "16, 24 or 32" : "16 (2-key) or 24 (3-key)"));
}

}  // namespace rkl::crypto::internal
