#include "rkl/crypto/pkcs12.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <algorithm>
#include <string>

#include "keys_internal.h"

namespace rkl::crypto {
namespace {

using internal::OpenSslError;

constexpr size_t kMaxPinLength = 128;

absl::Status WrongPinOrCorrupted() {
  // One message for both causes, so the file cannot be probed for which check failed.
  internal::ClearOpenSslErrors();
  return absl::UnauthenticatedError("wrong PIN or corrupted PKCS#12");
}

// OpenSSL wants a NUL-terminated C string; build it inside SecretBytes so it is wiped.
absl::StatusOr<SecretBytes> PinAsCString(const SecretBytes& pin) {
  std::span<const uint8_t> p = pin.RevealSecret();
  if (p.empty() || p.size() > kMaxPinLength) {
    return absl::InvalidArgumentError("pin: must be 1-128 bytes");
  }
  if (std::find(p.begin(), p.end(), 0) != p.end()) {
    return absl::InvalidArgumentError("pin: must not contain a NUL byte");
  }
  SecretBytes out(p.size() + 1);
  std::copy(p.begin(), p.end(), out.RevealSecretMutable().begin());
  return out;
}

const char* AsCString(const SecretBytes& s) {
  return reinterpret_cast<const char*>(s.RevealSecret().data());
}

}  // namespace

absl::StatusOr<Bytes> WritePkcs12(const PrivateKey& private_key, const Certificate& certificate,
                                  std::span<const Certificate> chain,
                                  std::string_view friendly_name, const SecretBytes& pin,
                                  const Pkcs12WriteOptions& options) {
  auto pass = PinAsCString(pin);
  if (!pass.ok()) return pass.status();
  if (options.iterations < 1) {
    return absl::InvalidArgumentError("options.iterations: must be positive");
  }
  if (X509_check_private_key(certificate.x509(), private_key.evp_pkey()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("certificate: does not match the private key");
  }
  auto ca = internal::X509StackOf(chain);
  if (!ca.ok()) return ca.status();
  std::string name(friendly_name);
  // NID_aes_256_cbc for both bags selects PBES2 with PBKDF2-HMAC-SHA256; mac_iter = -1 skips
  // PKCS12_create's default SHA-1 MAC so that an HMAC-SHA256 one can be set below.
  Pkcs12Ptr p12(PKCS12_create_ex(AsCString(*pass), name.empty() ? nullptr : name.c_str(),
                                 private_key.evp_pkey(), certificate.x509(), ca->get(),
                                 NID_aes_256_cbc, NID_aes_256_cbc, options.iterations,
                                 /*mac_iter=*/-1, /*keytype=*/0, nullptr, nullptr));
  if (p12 == nullptr) return OpenSslError(absl::StatusCode::kInternal, "PKCS#12 creation failed");
  if (PKCS12_set_mac(p12.get(), AsCString(*pass), -1, nullptr, 0, options.iterations,
                     EVP_sha256()) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "PKCS#12 MAC failed");
  }
  Bytes der = internal::ToDer(p12.get(), i2d_PKCS12);
  if (der.empty()) return OpenSslError(absl::StatusCode::kInternal, "PKCS#12 encoding failed");
  return der;
}

absl::StatusOr<Pkcs12Contents> ReadPkcs12(std::span<const uint8_t> pkcs12_der,
                                          const SecretBytes& pin) {
  auto pass = PinAsCString(pin);
  if (!pass.ok()) return pass.status();
  Pkcs12Ptr p12 = internal::ParseDerExact<Pkcs12Ptr>(pkcs12_der, d2i_PKCS12);
  if (p12 == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("pkcs12: not a DER PKCS#12 file");
  }
  // Without a MAC nothing authenticates the file before its bags are decrypted and parsed.
  if (PKCS12_mac_present(p12.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("pkcs12: integrity MAC is required");
  }
  if (PKCS12_verify_mac(p12.get(), AsCString(*pass), -1) != 1) return WrongPinOrCorrupted();

  EVP_PKEY* raw_key = nullptr;
  X509* raw_cert = nullptr;
  STACK_OF(X509)* raw_ca = nullptr;
  int rc = PKCS12_parse(p12.get(), AsCString(*pass), &raw_key, &raw_cert, &raw_ca);
  EvpPkeyPtr pkey(raw_key);
  X509Ptr cert(raw_cert);
  X509StackPtr ca(raw_ca);
  if (rc != 1) return WrongPinOrCorrupted();
  ERR_clear_error();
  if (pkey == nullptr || cert == nullptr) {
    return absl::InvalidArgumentError("pkcs12: must hold a private key and its certificate");
  }
  if (X509_check_private_key(cert.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("pkcs12: certificate does not match the private key");
  }
  auto key = PrivateKey::FromEvpPkey(std::move(pkey));
  if (!key.ok()) return key.status();
  auto certificate = Certificate::FromX509(std::move(cert));
  if (!certificate.ok()) return certificate.status();
  std::vector<Certificate> chain;
  while (ca != nullptr && sk_X509_num(ca.get()) > 0) {
    auto c = Certificate::FromX509(X509Ptr(sk_X509_shift(ca.get())));
    if (!c.ok()) return c.status();
    chain.push_back(*std::move(c));
  }
  return Pkcs12Contents{*std::move(key), *std::move(certificate), std::move(chain)};
}

}  // namespace rkl::crypto
