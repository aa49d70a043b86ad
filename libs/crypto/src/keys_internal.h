#pragma once
// Helpers shared by the asymmetric half of rkl::crypto (keys, rsa, ecdsa, x509, pkcs12); the
// DER/PEM/X.509 pieces are der_util.h, included here. Not installed, not part of the public
// API.

#include <openssl/evp.h>

#include "der_util.h"

namespace rkl::crypto::internal {

// SHA-256 fetched from OpenSSL's default providers once, for the life of the process
// (EVP_sha256() if the fetch fails): OpenSSL 3 looks the legacy EVP_sha256() object up in
// its provider store, under a lock, every time a signing context is set up with it.
const EVP_MD* Sha256();

}  // namespace rkl::crypto::internal
