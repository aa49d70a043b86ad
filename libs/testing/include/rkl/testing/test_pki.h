#pragma once
// A throwaway service PKI for tests that run real gRPC servers with mTLS: one `service-ca`
// (ECDSA P-256) and leaf certificates issued on demand with CN = DNS SAN = the identity, as
// PROTOCOL §2 profiles service certificates. Files go to a fresh temporary directory that
// the destructor removes. Test-only: keys are written unencrypted (mode 0600).
// Not thread-safe; create and issue from the test's main thread.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/x509.h"
#include "rkl/rpc/tls.h"

namespace rkl::testing {

class TestPki {
 public:
  static absl::StatusOr<std::unique_ptr<TestPki>> Create();
  ~TestPki();

  // Issues a certificate for `identity` (e.g. "hsm-kms", "mtms", "admin:alice") with
  // serverAuth+clientAuth and the DNS SANs identity and "localhost". The returned files
  // trust service-ca.
  absl::StatusOr<rpc::TlsFiles> Issue(const std::string& identity);
  // Only the trust anchor: for a client without a certificate.
  rpc::TlsFiles Anonymous() const { return {"", "", ca_file()}; }

  std::string ca_file() const { return dir_ + "/service-ca.pem"; }
  const std::string& dir() const { return dir_; }
  const crypto::Certificate& ca_certificate() const { return ca_cert_; }

 private:
  TestPki(std::string dir, crypto::PrivateKey key, crypto::Certificate cert)
      : dir_(std::move(dir)), ca_key_(std::move(key)), ca_cert_(std::move(cert)) {}
  std::string dir_;
  crypto::PrivateKey ca_key_;
  crypto::Certificate ca_cert_;
};

}  // namespace rkl::testing
