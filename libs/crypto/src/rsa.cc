#include "rkl/crypto/rsa.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "keys_internal.h"

namespace rkl::crypto {
namespace {

using internal::OpenSslError;

constexpr size_t kSha256Len = 32;
constexpr int kMinRsaBits = 2048;

absl::Status UniformDecryptionFailure() {
  // One message for every cause: which check failed must not be observable.
  internal::ClearOpenSslErrors();
  return absl::UnauthenticatedError("decryption failed");
}

// Sets OAEP-SHA256/MGF1-SHA256 and the label on an encrypt- or decrypt-initialised context.
bool ConfigureOaep(EVP_PKEY_CTX* ctx, std::span<const uint8_t> label) {
  if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) <= 0) {
    return false;
  }
  if (label.empty()) return true;  // the empty label is OAEP's default
  // set0 takes ownership of the buffer and frees it with the context, so hand it a copy.
  void* copy = OPENSSL_memdup(label.data(), label.size());
  if (copy == nullptr) return false;
  if (EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, copy, static_cast<int>(label.size())) <= 0) {
    OPENSSL_free(copy);
    return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<PrivateKey> GenerateRsaKey(int bits) {
  if (bits != 2048 && bits != 3072) {
    return absl::InvalidArgumentError("bits: RSA keys must be 2048 or 3072 bits");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr));
  BignumPtr e(BN_new());
  if (ctx == nullptr || e == nullptr || BN_set_word(e.get(), RSA_F4) != 1 ||
      EVP_PKEY_keygen_init(ctx.get()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), bits) <= 0 ||
      EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx.get(), e.get()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "RSA key generation setup failed");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_generate(ctx.get(), &raw) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "RSA key generation failed");
  }
  return PrivateKey::FromEvpPkey(EvpPkeyPtr(raw));
}

Bytes TransportKeyOaepLabel(std::string_view sn) {
  std::string label = "RKL-TK:";
  label.append(sn);
  return Bytes(label.begin(), label.end());
}

size_t RsaOaepMaxPlaintext(const PublicKey& key) {
  if (key.Type() != KeyType::kRsa) return 0;
  size_t k = static_cast<size_t>(EVP_PKEY_get_size(key.evp_pkey()));
  return k > 2 * kSha256Len + 2 ? k - 2 * kSha256Len - 2 : 0;
}

absl::StatusOr<Bytes> RsaOaepEncrypt(const PublicKey& key, const SecretBytes& plaintext,
                                     std::span<const uint8_t> label) {
  if (key.Type() != KeyType::kRsa) {
    return absl::InvalidArgumentError("public_key: RSA-OAEP needs an RSA key");
  }
  if (key.Bits() < kMinRsaBits) {
    return absl::InvalidArgumentError("public_key: RSA key must be at least 2048 bits");
  }
  if (plaintext.empty()) return absl::InvalidArgumentError("plaintext: must not be empty");
  size_t max = RsaOaepMaxPlaintext(key);
  if (plaintext.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("plaintext: at most ", max, " bytes fit RSA-OAEP-SHA256 under this key"));
  }
  if (label.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("label: too long");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.evp_pkey(), nullptr));
  if (ctx == nullptr || EVP_PKEY_encrypt_init(ctx.get()) <= 0 || !ConfigureOaep(ctx.get(), label)) {
    return OpenSslError(absl::StatusCode::kInternal, "RSA-OAEP setup failed");
  }
  std::span<const uint8_t> in = plaintext.RevealSecret();
  size_t out_len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &out_len, in.data(), in.size()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "RSA-OAEP encryption failed");
  }
  Bytes out(out_len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &out_len, in.data(), in.size()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "RSA-OAEP encryption failed");
  }
  out.resize(out_len);
  return out;
}

absl::StatusOr<SecretBytes> RsaOaepDecrypt(const PrivateKey& key,
                                           std::span<const uint8_t> ciphertext,
                                           std::span<const uint8_t> label) {
  if (key.Type() != KeyType::kRsa) {
    return absl::InvalidArgumentError("private_key: RSA-OAEP needs an RSA key");
  }
  if (label.size() > static_cast<size_t>(INT32_MAX)) return UniformDecryptionFailure();
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.evp_pkey(), nullptr));
  if (ctx == nullptr || EVP_PKEY_decrypt_init(ctx.get()) <= 0 || !ConfigureOaep(ctx.get(), label)) {
    return UniformDecryptionFailure();
  }
  // Decrypt into a modulus-sized secret buffer, then keep only the message: no clear byte is
  // ever held outside SecretBytes (the tail beyond the message is zeroes, wiped with it).
  size_t out_len = static_cast<size_t>(EVP_PKEY_get_size(key.evp_pkey()));
  SecretBytes buf(out_len);
  if (EVP_PKEY_decrypt(ctx.get(), buf.RevealSecretMutable().data(), &out_len, ciphertext.data(),
                       ciphertext.size()) <= 0) {
    return UniformDecryptionFailure();
  }
  return buf.Sub(0, out_len);
}

}  // namespace rkl::crypto
