#include "rkl/crypto/cmac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/openssl_ptr.h"
#include "symmetric_internal.h"

namespace rkl::crypto {
namespace {

const char* CbcCipherName(CipherFamily family, size_t key_length) {
  if (family == CipherFamily::kTdes) return key_length == 16 ? "DES-EDE-CBC" : "DES-EDE3-CBC";
  switch (key_length) {
    case 16:
      return "AES-128-CBC";
    case 24:
      return "AES-192-CBC";
    default:
      return "AES-256-CBC";
  }
}

// Fetching an algorithm walks the provider tables; do it once. EVP_MAC objects are
// reference-counted and safe to share between threads.
EVP_MAC* CmacAlgorithm() {
  static EvpMacPtr* const mac = new EvpMacPtr(EVP_MAC_fetch(nullptr, "CMAC", nullptr));
  return mac->get();
}

absl::Status CmacInto(CipherFamily family, const SecretBytes& key, std::span<const uint8_t> data,
                      std::span<uint8_t> out) {
  if (!IsValidKeyLength(family, key.size())) {
    return internal::BadKeyLength(family, key.size(), "CMAC");
  }
  EVP_MAC* algorithm = CmacAlgorithm();
  if (algorithm == nullptr) return internal::OpenSslFailure("CMAC fetch");
  EvpMacCtxPtr ctx(EVP_MAC_CTX_new(algorithm));
  if (ctx == nullptr) return internal::OpenSslFailure("CMAC");
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER,
                                       const_cast<char*>(CbcCipherName(family, key.size())), 0),
      OSSL_PARAM_construct_end(),
  };
  if (EVP_MAC_init(ctx.get(), key.RevealSecret().data(), key.size(), params) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1) {
    return internal::OpenSslFailure("CMAC");
  }
  size_t written = 0;
  if (EVP_MAC_final(ctx.get(), out.data(), &written, out.size()) != 1 || written != out.size()) {
    return internal::OpenSslFailure("CMAC");
  }
  return absl::OkStatus();
}

}  // namespace

size_t CmacSize(CipherFamily family) { return BlockSize(family); }

absl::StatusOr<Bytes> Cmac(CipherFamily family, const SecretBytes& key,
                           std::span<const uint8_t> data) {
  Bytes mac(CmacSize(family));
  RKL_RETURN_IF_ERROR(CmacInto(family, key, data, mac));
  return mac;
}

absl::StatusOr<Bytes> Cmac(CipherFamily family, const SecretBytes& key, const SecretBytes& data) {
  return Cmac(family, key, data.RevealSecret());
}

absl::StatusOr<Bytes> Cmac(KeyAlgorithm algorithm, const SecretBytes& key,
                           std::span<const uint8_t> data) {
  if (key.size() != KeyLength(algorithm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CMAC: ", std::string(KeyAlgorithmName(algorithm)), " key must be ",
                     KeyLength(algorithm), " bytes, got ", key.size()));
  }
  return Cmac(FamilyOf(algorithm), key, data);
}

absl::StatusOr<SecretBytes> CmacToSecret(CipherFamily family, const SecretBytes& key,
                                         std::span<const uint8_t> data) {
  SecretBytes out(CmacSize(family));
  RKL_RETURN_IF_ERROR(CmacInto(family, key, data, out.RevealSecretMutable()));
  return out;
}

bool CmacVerify(CipherFamily family, const SecretBytes& key, std::span<const uint8_t> data,
                std::span<const uint8_t> mac) {
  absl::StatusOr<Bytes> expected = Cmac(family, key, data);
  if (!expected.ok() || mac.size() != expected->size()) return false;
  return CRYPTO_memcmp(expected->data(), mac.data(), mac.size()) == 0;
}

bool CmacVerify(CipherFamily family, const SecretBytes& key, const SecretBytes& data,
                std::span<const uint8_t> mac) {
  return CmacVerify(family, key, data.RevealSecret(), mac);
}

}  // namespace rkl::crypto
