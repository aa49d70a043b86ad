#pragma once
// RAII owners for OpenSSL objects, so no error path leaks one. Each is a std::unique_ptr
// with the matching OpenSSL free function; use them for every object rkl creates.

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace rkl::crypto {

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter<T, Free>>;

using EvpPkeyPtr = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using EvpPkeyCtxPtr = OpenSslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EvpCipherCtxPtr = OpenSslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using EvpMdCtxPtr = OpenSslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using EvpMacPtr = OpenSslPtr<EVP_MAC, EVP_MAC_free>;
using EvpMacCtxPtr = OpenSslPtr<EVP_MAC_CTX, EVP_MAC_CTX_free>;
using X509Ptr = OpenSslPtr<X509, X509_free>;
using X509CrlPtr = OpenSslPtr<X509_CRL, X509_CRL_free>;
using X509StorePtr = OpenSslPtr<X509_STORE, X509_STORE_free>;
using X509StoreCtxPtr = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using X509ReqPtr = OpenSslPtr<X509_REQ, X509_REQ_free>;
using BioPtr = OpenSslPtr<BIO, BIO_free_all>;
using BignumPtr = OpenSslPtr<BIGNUM, BN_free>;
using Pkcs12Ptr = OpenSslPtr<PKCS12, PKCS12_free>;
using X509NamePtr = OpenSslPtr<X509_NAME, X509_NAME_free>;
using X509ExtensionPtr = OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using X509RevokedPtr = OpenSslPtr<X509_REVOKED, X509_REVOKED_free>;
using Asn1IntegerPtr = OpenSslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;
using Asn1EnumeratedPtr = OpenSslPtr<ASN1_ENUMERATED, ASN1_ENUMERATED_free>;
using Asn1TimePtr = OpenSslPtr<ASN1_TIME, ASN1_TIME_free>;
using Asn1OctetStringPtr = OpenSslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using Asn1BitStringPtr = OpenSslPtr<ASN1_BIT_STRING, ASN1_BIT_STRING_free>;
using BasicConstraintsPtr = OpenSslPtr<BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_free>;
using ExtendedKeyUsagePtr = OpenSslPtr<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;
using GeneralNamesPtr = OpenSslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using GeneralNamePtr = OpenSslPtr<GENERAL_NAME, GENERAL_NAME_free>;
using AuthorityKeyIdPtr = OpenSslPtr<AUTHORITY_KEYID, AUTHORITY_KEYID_free>;
// PKCS8_PRIV_KEY_INFO_free cleanses the embedded private key octets.
using Pkcs8PrivKeyInfoPtr = OpenSslPtr<PKCS8_PRIV_KEY_INFO, PKCS8_PRIV_KEY_INFO_free>;
using EcdsaSigPtr = OpenSslPtr<ECDSA_SIG, ECDSA_SIG_free>;

// An OpenSslPtr that can also be copied: a copy holds what `Copy` returns for the object, another
// counted reference (TakeReference) or a duplicate (X509_REQ_dup), and is null when the source
// is null or `Copy` fails. The immutable value types (PublicKey, Certificate, Crl, Csr) hold
// one, so their copy and move operations are the implicit ones. Objects shared by reference
// must only be read.
template <typename T, void (*Free)(T*), T* (*Copy)(T*)>
class CopyableOpenSslPtr : public OpenSslPtr<T, Free> {
  using Owner = OpenSslPtr<T, Free>;

 public:
  CopyableOpenSslPtr() = default;
  // Takes over what `owner` owns.
  CopyableOpenSslPtr(Owner owner) noexcept : Owner(std::move(owner)) {}  // NOLINT: implicit
  CopyableOpenSslPtr(const CopyableOpenSslPtr& other)
      : Owner(other != nullptr ? Copy(other.get()) : nullptr) {}
  CopyableOpenSslPtr& operator=(const CopyableOpenSslPtr& other) {
    if (this != &other) this->reset(other != nullptr ? Copy(other.get()) : nullptr);
    return *this;
  }
  CopyableOpenSslPtr(CopyableOpenSslPtr&&) noexcept = default;
  CopyableOpenSslPtr& operator=(CopyableOpenSslPtr&&) noexcept = default;
  ~CopyableOpenSslPtr() = default;
};

// `p` with one more reference taken by `UpRef` (X509_up_ref, ...); null when that fails.
template <typename T, int (*UpRef)(T*)>
T* TakeReference(T* p) {
  return UpRef(p) == 1 ? p : nullptr;
}
// X509_REQ has no reference count: copies are deep.
inline X509_REQ* DuplicateX509Req(X509_REQ* p) { return X509_REQ_dup(p); }

using SharedEvpPkeyPtr =
    CopyableOpenSslPtr<EVP_PKEY, EVP_PKEY_free, TakeReference<EVP_PKEY, EVP_PKEY_up_ref>>;
using SharedX509Ptr = CopyableOpenSslPtr<X509, X509_free, TakeReference<X509, X509_up_ref>>;
using SharedX509CrlPtr =
    CopyableOpenSslPtr<X509_CRL, X509_CRL_free, TakeReference<X509_CRL, X509_CRL_up_ref>>;
using CopiedX509ReqPtr = CopyableOpenSslPtr<X509_REQ, X509_REQ_free, DuplicateX509Req>;

// STACK_OF(X509) that owns one reference to each element.
inline void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
using X509StackPtr = OpenSslPtr<STACK_OF(X509), FreeX509Stack>;

}  // namespace rkl::crypto
