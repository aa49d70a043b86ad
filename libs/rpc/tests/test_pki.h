#pragma once
// Throwaway PKI for the rkl::rpc tests, made once per test process with the openssl CLI in
// a fresh temporary directory (removed at exit). Two independent CAs: `service-ca` (trusted
// by the servers under test) and `foreign-ca` (trusted by nobody). Keys are P-256 and the
// certificates are valid for a day; nothing here is fit for anything but tests.

#include <string>

#include "gtest/gtest.h"
#include "rkl/rpc/tls.h"
#include "rkl/rpc/unary_service.h"

namespace rkl::rpc::testing {

class TestPki {
 public:
  // Builds the PKI on first use; aborts the test binary if openssl fails.
  static const TestPki& Get();

  // Server certificate: CN "kms", DNS SANs "kms" and "localhost", issued by service-ca.
  TlsFiles Server() const;
  // Client certificates issued by service-ca: "mtms", "admin:alice", and "mismatch"
  // (CN "mtms" but DNS SAN "kms", which must yield no identity).
  TlsFiles Client(const std::string& name) const;
  // Client certificate "mtms" issued by foreign-ca.
  TlsFiles ForeignClient() const;
  // Trust only: for server-authenticated channels without a client certificate.
  TlsFiles AnonymousClient() const;

  const std::string& dir() const { return dir_; }
  std::string ca_file() const { return dir_ + "/service-ca.pem"; }

 private:
  TestPki();
  std::string dir_;
};

// Every Dispatch, for the suites that must hold on each, and their test names
// ("sync", "callbackinline", ...).
inline auto AllDispatches() {
  return ::testing::Values(Dispatch::kSync, Dispatch::kCallbackInline, Dispatch::kCallbackPool);
}
inline std::string DispatchTestName(const ::testing::TestParamInfo<Dispatch>& info) {
  std::string name = DispatchName(info.param);
  std::erase(name, '-');
  return name;
}

}  // namespace rkl::rpc::testing
