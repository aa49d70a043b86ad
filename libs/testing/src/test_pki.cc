#include "rkl/testing/test_pki.h"

#include <sys/stat.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/random.h"

namespace rkl::testing {
namespace {

absl::Status WriteFile(const std::string& path, std::span<const uint8_t> data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) return absl::InternalError("test pki: cannot write " + path);
  out.close();
  ::chmod(path.c_str(), 0600);
  return absl::OkStatus();
}

Bytes Serial() {
  Bytes s = crypto::RandomBytes(16);
  s[0] &= 0x7F;
  s[0] |= 0x01;
  return s;
}

std::string FileName(const std::string& identity) {
  std::string f = identity;
  for (char& c : f) {
    if (c == ':') c = '_';
  }
  return f;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestPki>> TestPki::Create() {
  char tmpl[] = "/tmp/rkl-test-pki.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("test pki: mkdtemp failed");
  std::string dir = tmpl;
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::GenerateEcP256Key());
  int64_t now = std::time(nullptr);
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName("service-ca")
      .SetSerial(Serial())
      .SetValidity(now - 3600, now + 2 * 86400)
      .SetBasicConstraints(true, 0)
      .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, b.SelfSign(key));
  std::string pem = cert.ToPem();
  RKL_RETURN_IF_ERROR(WriteFile(dir + "/service-ca.pem", AsBytes(pem)));
  return std::unique_ptr<TestPki>(new TestPki(dir, std::move(key), std::move(cert)));
}

TestPki::~TestPki() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

absl::StatusOr<rpc::TlsFiles> TestPki::Issue(const std::string& identity) {
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::GenerateEcP256Key());
  int64_t now = std::time(nullptr);
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName(identity)
      .SetSerial(Serial())
      .SetValidity(now - 3600, now + 86400)
      .SetPublicKey(key.GetPublicKey())
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(crypto::KeyUsage::kDigitalSignature | crypto::KeyUsage::kKeyAgreement)
      .SetExtendedKeyUsage(crypto::ExtendedKeyUsage::kServerAuth |
                           crypto::ExtendedKeyUsage::kClientAuth)
      .AddDnsName(identity)
      .AddDnsName("localhost");
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert, b.Sign(ca_cert_, ca_key_));
  std::string base = dir_ + "/" + FileName(identity);
  std::string pem = cert.ToPem();
  RKL_RETURN_IF_ERROR(WriteFile(base + ".pem", AsBytes(pem)));
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes key_pem, key.ExportPkcs8PemSecret());
  RKL_RETURN_IF_ERROR(WriteFile(base + ".key", key_pem.RevealSecret()));
  return rpc::TlsFiles{base + ".pem", base + ".key", ca_file()};
}

}  // namespace rkl::testing
