#include "rkl/crypto/keys.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "keys_internal.h"
#include "rkl/common/enum_names.h"
#include "rkl/common/status_macros.h"

namespace rkl::crypto {
namespace internal {

const EVP_MD* Sha256() {
  static const EVP_MD* const sha256 = [] {
    const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (fetched == nullptr) ERR_clear_error();
    return fetched != nullptr ? fetched : EVP_sha256();
  }();
  return sha256;
}

}  // namespace internal

namespace {

using internal::OpenSslError;

absl::StatusOr<KeyType> ClassifyKey(const EVP_PKEY* pkey, std::string_view field) {
  switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA:
      return KeyType::kRsa;
    case EVP_PKEY_EC: {
      char group[64] = {};
      size_t len = 0;
      if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &len) == 1 &&
          (OBJ_sn2nid(group) == NID_X9_62_prime256v1 ||
           EC_curve_nist2nid(group) == NID_X9_62_prime256v1)) {
        return KeyType::kEcP256;
      }
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), ": EC keys must be on curve P-256"));
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(field), ": key type must be RSA or EC P-256"));
  }
}

// A public-only EVP_PKEY: round-trips through SubjectPublicKeyInfo so that a PublicKey never
// shares an object that also holds private components.
EvpPkeyPtr PublicOnly(const EVP_PKEY* pkey) {
  Bytes spki = internal::ToDer(pkey, i2d_PUBKEY);
  if (spki.empty()) return nullptr;
  return internal::ParseDerExact<EvpPkeyPtr>(spki, d2i_PUBKEY);
}

}  // namespace

std::string_view KeyTypeName(KeyType type) {
  static constexpr EnumName<KeyType> kNames[] = {{KeyType::kRsa, "RSA"},
                                                 {KeyType::kEcP256, "EC-P256"}};
  return NameOf(kNames, type);
}

// ---- PublicKey ------------------------------------------------------------------------------

absl::StatusOr<PublicKey> PublicKey::FromDer(std::span<const uint8_t> der) {
  RKL_ASSIGN_OR_RETURN(EvpPkeyPtr pkey,
                       internal::DecodeDer<EvpPkeyPtr>(
                           der, d2i_PUBKEY, "public_key: not a DER SubjectPublicKeyInfo"));
  return FromPublicOnlyEvpPkey(std::move(pkey));
}

absl::StatusOr<PublicKey> PublicKey::FromPem(std::string_view pem) {
  RKL_ASSIGN_OR_RETURN(EvpPkeyPtr pkey,
                       internal::DecodePem<EvpPkeyPtr>(pem, PEM_read_bio_PUBKEY,
                                                       "public_key: not a PEM PUBLIC KEY"));
  return FromPublicOnlyEvpPkey(std::move(pkey));
}

absl::StatusOr<PublicKey> PublicKey::FromEvpPkey(EvpPkeyPtr pkey) {
  if (pkey == nullptr) return absl::InvalidArgumentError("public_key: null");
  auto type = ClassifyKey(pkey.get(), "public_key");
  if (!type.ok()) return type.status();
  EvpPkeyPtr pub = PublicOnly(pkey.get());
  if (pub == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "public_key: cannot encode as SPKI");
  }
  return PublicKey(std::move(pub), *type);
}

absl::StatusOr<PublicKey> PublicKey::FromPublicOnlyEvpPkey(EvpPkeyPtr pkey) {
  if (pkey == nullptr) return absl::InvalidArgumentError("public_key: null");
  auto type = ClassifyKey(pkey.get(), "public_key");
  if (!type.ok()) return type.status();
  return PublicKey(std::move(pkey), *type);
}

int PublicKey::Bits() const { return EVP_PKEY_get_bits(pkey_.get()); }

Bytes PublicKey::ToDer() const { return internal::ToDer(pkey_.get(), i2d_PUBKEY); }

std::string PublicKey::ToPem() const { return internal::ToPem(pkey_.get(), PEM_write_bio_PUBKEY); }

bool operator==(const PublicKey& a, const PublicKey& b) {
  if (a.pkey_ == nullptr || b.pkey_ == nullptr) return a.pkey_ == b.pkey_;
  bool eq = EVP_PKEY_eq(a.pkey_.get(), b.pkey_.get()) == 1;
  ERR_clear_error();  // EVP_PKEY_eq queues an error for keys of different types
  return eq;
}

// ---- PrivateKey -----------------------------------------------------------------------------

absl::StatusOr<PrivateKey> PrivateKey::FromPkcs8DerSecret(const SecretBytes& pkcs8_der) {
  RKL_ASSIGN_OR_RETURN(
      Pkcs8PrivKeyInfoPtr p8,
      internal::DecodeDer<Pkcs8PrivKeyInfoPtr>(pkcs8_der.RevealSecret(), d2i_PKCS8_PRIV_KEY_INFO,
                                               "private_key: not a DER PKCS#8 PrivateKeyInfo"));
  EvpPkeyPtr pkey(EVP_PKCS82PKEY(p8.get()));
  if (pkey == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("private_key: PKCS#8 holds no usable private key");
  }
  return FromEvpPkey(std::move(pkey));
}

absl::StatusOr<PrivateKey> PrivateKey::FromPemSecret(const SecretBytes& pem) {
  auto bytes = pem.RevealSecret();
  BioPtr bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
  if (bio == nullptr) return absl::InternalError("private_key: cannot allocate a BIO");
  EvpPkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (pkey == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("private_key: not an unencrypted PEM private key");
  }
  return FromEvpPkey(std::move(pkey));
}

absl::StatusOr<PrivateKey> PrivateKey::FromEvpPkey(EvpPkeyPtr pkey) {
  if (pkey == nullptr) return absl::InvalidArgumentError("private_key: null");
  auto type = ClassifyKey(pkey.get(), "private_key");
  if (!type.ok()) return type.status();
  // A handle named PrivateKey must be able to sign/decrypt: refuse a public-only key here
  // rather than fail later inside an operation.
  BIGNUM* secret = nullptr;
  const char* param = *type == KeyType::kRsa ? OSSL_PKEY_PARAM_RSA_D : OSSL_PKEY_PARAM_PRIV_KEY;
  bool has_private = EVP_PKEY_get_bn_param(pkey.get(), param, &secret) == 1;
  BN_clear_free(secret);
  ERR_clear_error();
  if (!has_private) return absl::InvalidArgumentError("private_key: holds no private component");
  return PrivateKey(std::move(pkey), *type);
}

int PrivateKey::Bits() const { return EVP_PKEY_get_bits(pkey_.get()); }

PublicKey PrivateKey::GetPublicKey() const {
  // Cannot fail for a key that passed ClassifyKey except on allocation failure, where
  // OpenSSL itself is unusable; PublicOnly returns null then and the public key is empty.
  return PublicKey(PublicOnly(pkey_.get()), type_);
}

absl::StatusOr<SecretBytes> PrivateKey::ExportPkcs8DerSecret() const {
  Pkcs8PrivKeyInfoPtr p8(EVP_PKEY2PKCS8(pkey_.get()));
  if (p8 == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "private_key: PKCS#8 encoding failed");
  }
  int len = i2d_PKCS8_PRIV_KEY_INFO(p8.get(), nullptr);
  if (len <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "private_key: PKCS#8 encoding failed");
  }
  // Encode straight into the SecretBytes buffer, so no other heap copy of the key exists.
  SecretBytes out(static_cast<size_t>(len));
  unsigned char* p = out.RevealSecretMutable().data();
  if (i2d_PKCS8_PRIV_KEY_INFO(p8.get(), &p) != len) {
    return OpenSslError(absl::StatusCode::kInternal, "private_key: PKCS#8 encoding failed");
  }
  return out;
}

}  // namespace rkl::crypto

namespace rkl::crypto {

absl::StatusOr<SecretBytes> PrivateKey::ExportPkcs8PemSecret() const {
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (bio == nullptr) return absl::InternalError("private_key: cannot allocate a BIO");
  if (PEM_write_bio_PKCS8PrivateKey(bio.get(), pkey_.get(), nullptr, nullptr, 0, nullptr,
                                    nullptr) != 1) {
    ERR_clear_error();
    return absl::InternalError("private_key: PEM encoding failed");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0) return absl::InternalError("private_key: PEM encoding failed");
  return SecretBytes::CopyOf(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
}

}  // namespace rkl::crypto
