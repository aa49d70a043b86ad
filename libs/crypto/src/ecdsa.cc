#include "rkl/crypto/ecdsa.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include <algorithm>

#include "keys_internal.h"

namespace rkl::crypto {
namespace {

using internal::OpenSslError;
using internal::Sha256;

// Exactly one DER ECDSA-Sig-Value whose re-encoding is identical, so a signature has a single
// accepted byte form (no BER variants, no trailing bytes).
bool IsCanonicalDerSignature(std::span<const uint8_t> sig) {
  EcdsaSigPtr parsed = internal::ParseDerExact<EcdsaSigPtr>(sig, d2i_ECDSA_SIG);
  if (parsed == nullptr) return false;
  Bytes again = internal::ToDer(parsed.get(), i2d_ECDSA_SIG);
  return std::equal(again.begin(), again.end(), sig.begin(), sig.end());
}

}  // namespace

absl::StatusOr<PrivateKey> GenerateEcP256Key() {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr));
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) <= 0 ||
      EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx.get(), NID_X9_62_prime256v1) <= 0 ||
      EVP_PKEY_CTX_set_ec_param_enc(ctx.get(), OPENSSL_EC_NAMED_CURVE) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "EC key generation setup failed");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_generate(ctx.get(), &raw) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "EC key generation failed");
  }
  return PrivateKey::FromEvpPkey(EvpPkeyPtr(raw));
}

absl::StatusOr<Bytes> EcdsaSign(const PrivateKey& key, std::span<const uint8_t> message) {
  if (key.Type() != KeyType::kEcP256) {
    return absl::InvalidArgumentError("private_key: ECDSA needs an EC P-256 key");
  }
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  if (md == nullptr ||
      EVP_DigestSignInit(md.get(), nullptr, Sha256(), nullptr, key.evp_pkey()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA sign setup failed");
  }
  size_t len = 0;
  if (EVP_DigestSign(md.get(), nullptr, &len, message.data(), message.size()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA signing failed");
  }
  Bytes sig(len);
  if (EVP_DigestSign(md.get(), sig.data(), &len, message.data(), message.size()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA signing failed");
  }
  sig.resize(len);
  return sig;
}

absl::Status EcdsaVerify(const PublicKey& key, std::span<const uint8_t> message,
                         std::span<const uint8_t> signature) {
  if (key.Type() != KeyType::kEcP256) {
    return absl::InvalidArgumentError("public_key: ECDSA needs an EC P-256 key");
  }
  if (!IsCanonicalDerSignature(signature)) {
    internal::ClearOpenSslErrors();
    return absl::InvalidArgumentError("signature: not a canonical DER ECDSA-Sig-Value");
  }
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  if (md == nullptr ||
      EVP_DigestVerifyInit(md.get(), nullptr, Sha256(), nullptr, key.evp_pkey()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "ECDSA verify setup failed");
  }
  int rc = EVP_DigestVerify(md.get(), signature.data(), signature.size(), message.data(),
                            message.size());
  internal::ClearOpenSslErrors();
  if (rc != 1) return absl::UnauthenticatedError("signature: does not verify");
  return absl::OkStatus();
}

}  // namespace rkl::crypto
