#pragma once
// Shared helpers of the tr34 tests: reading the Annex B samples in tests/data.

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <iterator>
#include <string>

#include "der.h"
#include "gtest/gtest.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/tr34/tokens.h"

namespace rkl::tr34::testing {

inline Bytes ReadSample(const std::string& name) {
  std::ifstream in(std::string(RKL_TR34_TEST_DATA) + "/" + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << name;
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::string ReadSampleText(const std::string& name) {
  Bytes b = ReadSample(name);
  return std::string(b.begin(), b.end());
}

inline crypto::PrivateKey ReadSampleKey(const std::string& name) {
  Bytes pem = ReadSample(name);
  auto key = crypto::PrivateKey::FromPemSecret(crypto::SecretBytes::CopyOf(pem));
  EXPECT_TRUE(key.ok()) << key.status();
  return *std::move(key);
}

inline crypto::SecretBytes SecretFromHex(std::string_view hex) {
  auto bytes = FromHex(hex);
  EXPECT_TRUE(bytes.ok());
  return crypto::SecretBytes::CopyOf(*bytes);
}

inline Bytes HexBytes(std::string_view hex) {
  auto bytes = FromHex(hex);
  EXPECT_TRUE(bytes.ok());
  return *bytes;
}

// The id and key of a certificate read straight through OpenSSL, for the sample KDH
// certificates that crypto::Certificate refuses (their extensions are duplicated; see
// tests/data/README.md).
inline PeerKey RawPeer(const std::string& pem_name) {
  std::string pem = ReadSampleText(pem_name);
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  crypto::X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  EXPECT_NE(x, nullptr);
  auto encode = [](auto* obj, auto i2d) {
    Bytes out(static_cast<size_t>(i2d(obj, nullptr)));
    unsigned char* p = out.data();
    i2d(obj, &p);
    return out;
  };
  Bytes id = der::Tlv(der::kSequence,
                      der::Concat({encode(X509_get_issuer_name(x.get()), i2d_X509_NAME),
                                   encode(X509_get_serialNumber(x.get()), i2d_ASN1_INTEGER)}));
  auto key = crypto::PublicKey::FromEvpPkey(crypto::EvpPkeyPtr(X509_get_pubkey(x.get())));
  EXPECT_TRUE(key.ok()) << key.status();
  return PeerKey{CertId{id}, *std::move(key)};
}

}  // namespace rkl::tr34::testing
