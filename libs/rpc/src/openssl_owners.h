#pragma once
// RAII owners of the few OpenSSL objects rkl::rpc handles itself (TLS material, CRLs and
// peer certificates): rkl::rpc parses PEM and X.509 on its own and stays independent of
// rkl::crypto. Private to rkl::rpc's sources.

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string_view>

namespace rkl::rpc {

template <typename T, void (*Free)(T*)>
struct OpenSslFree {
  void operator()(T* p) const { Free(p); }
};

using BioPtr = std::unique_ptr<BIO, OpenSslFree<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, OpenSslFree<X509, X509_free>>;
using CrlPtr = std::unique_ptr<X509_CRL, OpenSslFree<X509_CRL, X509_CRL_free>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslFree<EVP_PKEY, EVP_PKEY_free>>;
using BnPtr = std::unique_ptr<BIGNUM, OpenSslFree<BIGNUM, BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpenSslFree<ASN1_INTEGER, ASN1_INTEGER_free>>;

// The PEM readers' passphrase callback: refuses encrypted keys instead of letting OpenSSL
// prompt on a terminal a daemon lacks.
inline int NoPassphrase(char*, int, int, void*) { return -1; }

// A read-only BIO over `data`, which must outlive it.
inline BioPtr MemBio(std::string_view data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

}  // namespace rkl::rpc
