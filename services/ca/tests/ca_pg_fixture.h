#pragma once
// Shared set-up of the CA's PostgreSQL tests: a fresh database with the CA schema, the real
// repository, a CaCore over it, and helpers to cross-check with the openssl CLI.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "ca_core.h"
#include "ca_db_roles.h"
#include "ca_pg_repository.h"
#include "fake_hsm_key_source.h"
#include "master_key.h"
#include "openssl_cli.h"
#include "rkl/ca/migrations.h"
#include "rkl/crypto/random.h"
#include "rkl/testing/service_database.h"

namespace rkl::ca {

class CaPgTest : public rkl::testing::PgFixture {
 protected:
  CaPgTest() : PgFixture({.migrations = Migrations(), .grants = kCaRuntimeGrants}) {}

  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgFixture::SetUp());
    // The repository runs as the runtime role, with only the privileges the CA is granted.
    repo_.emplace(&database().pool());
    master_key_.emplace(MasterKey::FromSecret(crypto::RandomSecret(32)).value());
    MakeCore();
  }

  void MakeCore() {
    core_.emplace(
        &*repo_, &*master_key_, policy_, [] { return absl::Now(); }, crypto::FillRandom,
        &hsm_keys_);
  }

  BootstrapResult Bootstrap(const std::string& pin = "2468") {
    BootstrapRequest req;
    req.admin_names = {"alice", "bob"};
    req.operator_pin = crypto::SecretBytes::CopyOf(AsBytes(pin));
    req.pkcs12_iterations = 2048;
    auto result = core_->Bootstrap(req);
    EXPECT_TRUE(result.ok()) << result.status();
    return *std::move(result);
  }

  // `openssl x509 -text -noout` of `pem`.
  std::string X509Text(const std::string& pem) {
    std::string path = tmp_.Write("x509-text.pem", pem);
    return testing::RunCommand("openssl x509 -text -noout -in " + path).output;
  }

  // Every extension header `openssl x509 -text` prints in the "X509v3 extensions" section
  // (the lines indented by 12 spaces, e.g. "X509v3 Key Usage: critical"), in order, so an
  // unexpected extension of any kind shows up.
  static std::vector<std::string> ExtensionHeaders(const std::string& text) {
    std::vector<std::string> out;
    size_t pos = text.find("        X509v3 extensions:\n");
    if (pos == std::string::npos) return out;
    pos = text.find('\n', pos) + 1;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      std::string line = text.substr(pos, end - pos);
      pos = end == std::string::npos ? text.size() : end + 1;
      size_t indent = line.find_first_not_of(' ');
      if (indent < 12) break;     // the section is over
      if (indent > 12) continue;  // an extension's value
      line = line.substr(12);
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out.push_back(line);
    }
    return out;
  }

  // Runs `openssl verify -CAfile` on `cert_pem` against `ca_pem` (plus a CRL if given).
  testing::CommandResult OpensslVerify(const std::string& ca_pem, const std::string& cert_pem,
                                       const std::string& crl_pem = "") {
    std::string ca = tmp_.Write("verify-ca.pem", ca_pem);
    std::string cert = tmp_.Write("verify-leaf.pem", cert_pem);
    std::string cmd = "openssl verify -x509_strict -CAfile " + ca;
    if (!crl_pem.empty()) cmd += " -crl_check -CRLfile " + tmp_.Write("verify-crl.pem", crl_pem);
    return testing::RunCommand(cmd + " " + cert);
  }

  std::optional<PgCaRepository> repo_;
  std::optional<MasterKey> master_key_;
  CaPolicy policy_ = [] {
    CaPolicy p;
    p.terminal_root_key = KeySpec::kRsa2048;  // fast; the bootstrap test uses the default
    p.kdh_ca_key = KeySpec::kRsa2048;
    return p;
  }();
  FakeHsmKeySource hsm_keys_;  // the HSMs whose KDH keys the core certifies
  std::optional<CaCore> core_;
  testing::TempDir tmp_;
};

}  // namespace rkl::ca
