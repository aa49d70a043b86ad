#include "rkl/crypto/kwp.h"

#include <openssl/evp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/openssl_ptr.h"
#include "symmetric_internal.h"

namespace rkl::crypto {
namespace {

// RFC 5649 limits the key to 2^32 - 1 bytes; OpenSSL takes an int. Keys are tiny in practice.
constexpr size_t kMaxKeyLength = 1 << 20;

const EVP_CIPHER* WrapPadCipher(size_t kek_length) {
  using internal::FetchCipher;
  static const EVP_CIPHER* const wrap128 = FetchCipher("AES-128-WRAP-PAD", EVP_aes_128_wrap_pad());
  static const EVP_CIPHER* const wrap192 = FetchCipher("AES-192-WRAP-PAD", EVP_aes_192_wrap_pad());
  static const EVP_CIPHER* const wrap256 = FetchCipher("AES-256-WRAP-PAD", EVP_aes_256_wrap_pad());
  switch (kek_length) {
    case 16:
      return wrap128;
    case 24:
      return wrap192;
    default:
      return wrap256;
  }
}

absl::StatusOr<EvpCipherCtxPtr> NewWrapContext(const SecretBytes& kek, bool encrypt,
                                               const char* what) {
  if (!IsValidKeyLength(CipherFamily::kAes, kek.size())) {
    return internal::BadKeyLength(CipherFamily::kAes, kek.size(), what);
  }
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) return internal::OpenSslFailure(what);
  // Wrap modes are refused by EVP unless the caller opts in: they are not general ciphers.
  EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  if (EVP_CipherInit_ex(ctx.get(), WrapPadCipher(kek.size()), nullptr, kek.RevealSecret().data(),
                        nullptr, encrypt ? 1 : 0) != 1) {
    return internal::OpenSslFailure(what);
  }
  return ctx;
}

}  // namespace

absl::StatusOr<Bytes> KwpWrap(const SecretBytes& kek, const SecretBytes& key) {
  if (key.empty() || key.size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(absl::StrCat("KWP wrap: key to wrap is ", key.size(),
                                                   " bytes; expected 1..", kMaxKeyLength));
  }
  absl::StatusOr<EvpCipherCtxPtr> ctx = NewWrapContext(kek, /*encrypt=*/true, "KWP wrap");
  if (!ctx.ok()) return ctx.status();
  Bytes out((key.size() + 7) / 8 * 8 + 8 + 16);  // slack: OpenSSL checks room for one more block
  int written = 0;
  if (EVP_CipherUpdate(ctx->get(), out.data(), &written, key.RevealSecret().data(),
                       static_cast<int>(key.size())) != 1) {
    return internal::OpenSslFailure("KWP wrap");
  }
  int final_written = 0;
  if (EVP_CipherFinal_ex(ctx->get(), out.data() + written, &final_written) != 1) {
    return internal::OpenSslFailure("KWP wrap");
  }
  out.resize(static_cast<size_t>(written + final_written));
  if (out.size() != (key.size() + 7) / 8 * 8 + 8) return internal::OpenSslFailure("KWP wrap");
  return out;
}

absl::StatusOr<SecretBytes> KwpUnwrap(const SecretBytes& kek, std::span<const uint8_t> wrapped) {
  if (wrapped.size() < 16 || wrapped.size() % 8 != 0 || wrapped.size() > kMaxKeyLength + 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("KWP unwrap: wrapped key is ", wrapped.size(),
                     " bytes; expected a multiple of 8, at least 16"));
  }
  absl::StatusOr<EvpCipherCtxPtr> ctx = NewWrapContext(kek, /*encrypt=*/false, "KWP unwrap");
  if (!ctx.ok()) return ctx.status();
  // Decrypt into a SecretBytes so the clear key never touches a plain buffer; it is then
  // trimmed to the length recorded in the RFC 5649 integrity block (the slack is wiped).
  SecretBytes out(wrapped.size() + 16);
  auto buf = out.RevealSecretMutable();
  int written = 0;
  int final_written = 0;
  const bool ok = EVP_CipherUpdate(ctx->get(), buf.data(), &written, wrapped.data(),
                                   static_cast<int>(wrapped.size())) == 1 &&
                  written > 0 &&
                  EVP_CipherFinal_ex(ctx->get(), buf.data() + written, &final_written) == 1;
  if (!ok) {
    internal::OpenSslFailure("KWP unwrap").IgnoreError();  // drain the queue, say nothing
    return absl::UnauthenticatedError("KWP unwrap failed");
  }
  return out.Sub(0, static_cast<size_t>(written + final_written));
}

}  // namespace rkl::crypto
