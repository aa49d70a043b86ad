#pragma once
// Keys and CSRs for the CA tests, including deliberately wrong ones (a CSR signed by a key
// other than the one it carries, an RSA key with a non-standard exponent). Test-only.

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <string>

#include "absl/status/statusor.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/openssl_ptr.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509_csr.h"

namespace rkl::ca::testing {

inline std::string CsrPem(const crypto::PrivateKey& key, const std::string& cn = "requested") {
  return crypto::CsrBuilder().SetSubjectCommonName(cn).Sign(key).value().ToPem();
}

// A well-formed CSR that carries `claimed`'s public key but is signed by `signer`: its
// signature does not match its key.
inline std::string MismatchedCsrPem(const crypto::PrivateKey& signer,
                                    const crypto::PrivateKey& claimed) {
  crypto::Csr csr = crypto::CsrBuilder().SetSubjectCommonName("x").Sign(claimed).value();
  crypto::X509ReqPtr req(X509_REQ_dup(csr.x509_req()));
  X509_REQ_set_pubkey(req.get(), claimed.evp_pkey());
  X509_REQ_sign(req.get(), signer.evp_pkey(), EVP_sha256());
  int len = i2d_X509_REQ(req.get(), nullptr);
  Bytes der(static_cast<size_t>(len));
  unsigned char* p = der.data();
  i2d_X509_REQ(req.get(), &p);
  return crypto::Csr::FromDer(der).value().ToPem();
}

// RSA key with public exponent `e` (the CA must refuse anything but 65537).
inline crypto::PrivateKey RsaKeyWithExponent(int bits, unsigned e) {
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY_keygen_init(ctx.get());
  EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.get(), bits);
  crypto::BignumPtr bn(BN_new());
  BN_set_word(bn.get(), e);
  EVP_PKEY_CTX_set1_rsa_keygen_pubexp(ctx.get(), bn.get());
  EVP_PKEY* raw = nullptr;
  EVP_PKEY_keygen(ctx.get(), &raw);
  return crypto::PrivateKey::FromEvpPkey(crypto::EvpPkeyPtr(raw)).value();
}

}  // namespace rkl::ca::testing
