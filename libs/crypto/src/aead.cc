#include "rkl/crypto/aead.h"

#include <openssl/evp.h>

#include <algorithm>
#include <climits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/random.h"
#include "symmetric_internal.h"

namespace rkl::crypto {
namespace {

const EVP_CIPHER* Aes256Gcm() {
  static const EVP_CIPHER* const gcm = internal::FetchCipher("AES-256-GCM", EVP_aes_256_gcm());
  return gcm;
}

absl::Status CheckKey(const SecretBytes& key, const char* what) {
  if (key.size() != kAeadKeySize) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": AES-256-GCM key must be 32 bytes, got ", key.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckSize(size_t n, const char* what, const char* field) {
  if (n > INT_MAX / 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", field, " is too large"));
  }
  return absl::OkStatus();
}

// EVP_CipherInit_ex's direction argument.
constexpr int kSeal = 1;
constexpr int kOpen = 0;

// An AES-256-GCM context in direction `enc` (kSeal or kOpen), keyed with `key` and `nonce`,
// with `aad` already fed in; null when OpenSSL refuses any step.
EvpCipherCtxPtr StartGcm(int enc, const SecretBytes& key, std::span<const uint8_t> nonce,
                         std::span<const uint8_t> aad) {
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (ctx == nullptr ||
      EVP_CipherInit_ex(ctx.get(), Aes256Gcm(), nullptr, nullptr, nullptr, enc) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadNonceSize, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, key.RevealSecret().data(), nonce.data(),
                        enc) != 1 ||
      (!aad.empty() &&
       EVP_CipherUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1)) {
    return nullptr;
  }
  return ctx;
}

}  // namespace

absl::StatusOr<Bytes> AeadSealWithNonceForSelfTest(const SecretBytes& key,
                                                   std::span<const uint8_t> nonce,
                                                   const SecretBytes& plaintext,
                                                   std::span<const uint8_t> aad) {
  constexpr const char* kWhat = "AES-GCM seal";
  if (absl::Status s = CheckKey(key, kWhat); !s.ok()) return s;
  if (nonce.size() != kAeadNonceSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": nonce must be 12 bytes, got ", nonce.size()));
  }
  if (absl::Status s = CheckSize(plaintext.size(), kWhat, "plaintext"); !s.ok()) return s;
  if (absl::Status s = CheckSize(aad.size(), kWhat, "AAD"); !s.ok()) return s;

  Bytes out(kAeadNonceSize + plaintext.size() + kAeadTagSize);
  std::copy(nonce.begin(), nonce.end(), out.begin());
  uint8_t* ct = out.data() + kAeadNonceSize;
  uint8_t* tag = ct + plaintext.size();

  EvpCipherCtxPtr ctx = StartGcm(kSeal, key, nonce, aad);
  if (ctx == nullptr) return internal::OpenSslFailure(kWhat);
  int written = 0;
  if (!plaintext.empty() &&
      EVP_EncryptUpdate(ctx.get(), ct, &written, plaintext.RevealSecret().data(),
                        static_cast<int>(plaintext.size())) != 1) {
    return internal::OpenSslFailure(kWhat);
  }
  int final_written = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), ct + written, &final_written) != 1 ||
      static_cast<size_t>(written + final_written) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kAeadTagSize, tag) != 1) {
    return internal::OpenSslFailure(kWhat);
  }
  return out;
}

absl::StatusOr<Bytes> AeadSeal(const SecretBytes& key, const SecretBytes& plaintext,
                               std::span<const uint8_t> aad) {
  return AeadSeal(key, plaintext, aad, FillRandom);
}

absl::StatusOr<Bytes> AeadSeal(const SecretBytes& key, const SecretBytes& plaintext,
                               std::span<const uint8_t> aad, const RandomSource& random) {
  const Bytes nonce = RandomBytes(random, kAeadNonceSize);
  return AeadSealWithNonceForSelfTest(key, nonce, plaintext, aad);
}

absl::StatusOr<SecretBytes> AeadOpen(const SecretBytes& key, std::span<const uint8_t> sealed,
                                     std::span<const uint8_t> aad) {
  constexpr const char* kWhat = "AES-GCM open";
  if (absl::Status s = CheckKey(key, kWhat); !s.ok()) return s;
  if (sealed.size() < kAeadNonceSize + kAeadTagSize) {
    return absl::InvalidArgumentError(absl::StrCat(kWhat, ": sealed record is ", sealed.size(),
                                                   " bytes; the minimum is 28 (nonce + tag)"));
  }
  if (absl::Status s = CheckSize(sealed.size(), kWhat, "sealed record"); !s.ok()) return s;
  if (absl::Status s = CheckSize(aad.size(), kWhat, "AAD"); !s.ok()) return s;

  const auto nonce = sealed.first(kAeadNonceSize);
  const auto ct = sealed.subspan(kAeadNonceSize, sealed.size() - kAeadNonceSize - kAeadTagSize);
  // EVP_CTRL_GCM_SET_TAG takes a non-const pointer; give it a copy of the (public) tag.
  Bytes tag(sealed.end() - kAeadTagSize, sealed.end());

  EvpCipherCtxPtr ctx = StartGcm(kOpen, key, nonce, aad);
  if (ctx == nullptr) return internal::OpenSslFailure(kWhat);
  SecretBytes out(ct.size());
  auto buf = out.RevealSecretMutable();
  int written = 0;
  if (!ct.empty() && EVP_DecryptUpdate(ctx.get(), buf.data(), &written, ct.data(),
                                       static_cast<int>(ct.size())) != 1) {
    return internal::OpenSslFailure(kWhat);
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kAeadTagSize, tag.data()) != 1) {
    return internal::OpenSslFailure(kWhat);
  }
  int final_written = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), buf.data() + written, &final_written) != 1) {
    // `out` holds unauthenticated plaintext; it is wiped when it goes out of scope here.
    internal::OpenSslFailure(kWhat).IgnoreError();
    return absl::UnauthenticatedError("AES-GCM open failed");
  }
  return out;
}

}  // namespace rkl::crypto
