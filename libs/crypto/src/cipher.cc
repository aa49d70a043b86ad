#include "rkl/crypto/cipher.h"

#include <openssl/evp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/openssl_ptr.h"
#include "symmetric_internal.h"

namespace rkl::crypto {
namespace {

const EVP_CIPHER* SelectCipher(CipherFamily family, BlockMode mode, size_t key_length) {
  using internal::FetchCipher;
  const bool ecb = mode == BlockMode::kEcb;
  if (family == CipherFamily::kTdes) {
    // OpenSSL's DES-EDE is the 2-key (K1 K2 K1) variant, DES-EDE3 the 3-key one.
    static const EVP_CIPHER* const ede_ecb = FetchCipher("DES-EDE-ECB", EVP_des_ede_ecb());
    static const EVP_CIPHER* const ede_cbc = FetchCipher("DES-EDE-CBC", EVP_des_ede_cbc());
    static const EVP_CIPHER* const ede3_ecb = FetchCipher("DES-EDE3-ECB", EVP_des_ede3_ecb());
    static const EVP_CIPHER* const ede3_cbc = FetchCipher("DES-EDE3-CBC", EVP_des_ede3_cbc());
    if (key_length == 16) return ecb ? ede_ecb : ede_cbc;
    return ecb ? ede3_ecb : ede3_cbc;
  }
  static const EVP_CIPHER* const aes128_ecb = FetchCipher("AES-128-ECB", EVP_aes_128_ecb());
  static const EVP_CIPHER* const aes128_cbc = FetchCipher("AES-128-CBC", EVP_aes_128_cbc());
  static const EVP_CIPHER* const aes192_ecb = FetchCipher("AES-192-ECB", EVP_aes_192_ecb());
  static const EVP_CIPHER* const aes192_cbc = FetchCipher("AES-192-CBC", EVP_aes_192_cbc());
  static const EVP_CIPHER* const aes256_ecb = FetchCipher("AES-256-ECB", EVP_aes_256_ecb());
  static const EVP_CIPHER* const aes256_cbc = FetchCipher("AES-256-CBC", EVP_aes_256_cbc());
  switch (key_length) {
    case 16:
      return ecb ? aes128_ecb : aes128_cbc;
    case 24:
      return ecb ? aes192_ecb : aes192_cbc;
    default:
      return ecb ? aes256_ecb : aes256_cbc;
  }
}

// Runs the cipher over `in` into `out` (same size). All argument checks live here, so the
// public wrappers differ only in who owns the output buffer.
absl::Status RunCipher(CipherFamily family, BlockMode mode, const SecretBytes& key,
                       std::span<const uint8_t> iv, std::span<const uint8_t> in,
                       std::span<uint8_t> out, bool encrypt) {
  const char* what = encrypt ? "block encrypt" : "block decrypt";
  if (!IsValidKeyLength(family, key.size())) {
    return internal::BadKeyLength(family, key.size(), what);
  }
  const size_t block = BlockSize(family);
  if (in.size() % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": input is ", in.size(), " bytes, not a multiple of the ",
        internal::FamilyName(family), " block size ", block, " (no padding is applied)"));
  }
  if (mode == BlockMode::kEcb && !iv.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ECB takes no IV"));
  }
  if (mode == BlockMode::kCbc && iv.size() != block) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": CBC IV is ", iv.size(), " bytes; expected ", block));
  }
  if (in.empty()) return absl::OkStatus();

  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) return internal::OpenSslFailure(what);
  if (EVP_CipherInit_ex(ctx.get(), SelectCipher(family, mode, key.size()), nullptr,
                        key.RevealSecret().data(), iv.empty() ? nullptr : iv.data(),
                        encrypt ? 1 : 0) != 1 ||
      EVP_CIPHER_CTX_set_padding(ctx.get(), 0) != 1) {
    return internal::OpenSslFailure(what);
  }
  int written = 0;
  if (EVP_CipherUpdate(ctx.get(), out.data(), &written, in.data(), static_cast<int>(in.size())) !=
      1) {
    return internal::OpenSslFailure(what);
  }
  int final_written = 0;
  if (EVP_CipherFinal_ex(ctx.get(), out.data() + written, &final_written) != 1 ||
      static_cast<size_t>(written + final_written) != in.size()) {
    return internal::OpenSslFailure(what);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Bytes> Encrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, std::span<const uint8_t> plaintext) {
  Bytes out(plaintext.size());
  RKL_RETURN_IF_ERROR(RunCipher(family, mode, key, iv, plaintext, out, /*encrypt=*/true));
  return out;
}

absl::StatusOr<Bytes> Encrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, const SecretBytes& plaintext) {
  return Encrypt(family, mode, key, iv, plaintext.RevealSecret());
}

absl::StatusOr<Bytes> Decrypt(CipherFamily family, BlockMode mode, const SecretBytes& key,
                              std::span<const uint8_t> iv, std::span<const uint8_t> ciphertext) {
  Bytes out(ciphertext.size());
  RKL_RETURN_IF_ERROR(RunCipher(family, mode, key, iv, ciphertext, out, /*encrypt=*/false));
  return out;
}

absl::StatusOr<SecretBytes> DecryptToSecret(CipherFamily family, BlockMode mode,
                                            const SecretBytes& key, std::span<const uint8_t> iv,
                                            std::span<const uint8_t> ciphertext) {
  SecretBytes out(ciphertext.size());
  RKL_RETURN_IF_ERROR(RunCipher(family, mode, key, iv, ciphertext, out.RevealSecretMutable(),
                                /*encrypt=*/false));
  return out;
}

}  // namespace rkl::crypto
