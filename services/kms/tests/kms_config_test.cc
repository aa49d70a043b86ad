#include "kms_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/testing/temp_dir.h"

namespace rkl::kms {
namespace {

using ::testing::HasSubstr;

EnvLookup NoEnv() {
  return [](const std::string&) { return std::nullopt; };
}

// Path keys must name readable files; their content is checked later, by rkl::rpc.
class TlsFilesFixture : public rkl::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    for (const char* f :
         {"kms.pem", "kms.key", "ca.pem", "client.pem", "client.key", "audit-mac.key"}) {
      WriteFile(f, "placeholder\n", 0644);
    }
  }
  std::string TlsYaml(const std::string& hsm_extra = "") const {
    return "tls: {cert_file: " + dir_ + "/kms.pem, key_file: " + dir_ +
           "/kms.key, ca_file: " + dir_ + "/ca.pem}\nhsm: {" + hsm_extra +
           "tls: {cert_file: " + dir_ + "/client.pem, key_file: " + dir_ +
           "/client.key, ca_file: " + dir_ + "/ca.pem}}\n" + "crl: {ca_endpoint: 'ca:50051'}\n" +
           "audit: {mac_key_file: " + dir_ + "/audit-mac.key}\n";
  }
};

TEST_F(TlsFilesFixture, DefaultsAreTheDocumentedOnes) {
  ConfigSchema schema = MakeKmsConfigSchema();
  auto config = LoadConfigFromYaml(schema,
                                   TlsYaml("pk_index: 7, mak_index: 8, ") +
                                       "db: {dsn: 'host=db dbname=rkl_kms password=hunter2'}\n",
                                   NoEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  KmsSettings s = KmsSettingsFromConfig(*config).value();
  EXPECT_EQ(s.server.listen_address, "0.0.0.0:50055");
  EXPECT_EQ(s.server.client_cert_mode, rpc::ClientCertMode::kOptionalVerified);
  EXPECT_EQ(s.core.session_ttl, absl::Seconds(60));
  EXPECT_EQ(s.core.session_retention, absl::Minutes(10));
  EXPECT_EQ(s.session_purge_interval, absl::Minutes(1));
  EXPECT_EQ(s.refusal_flush_interval, absl::Seconds(10));
  EXPECT_EQ(s.core.refusal_retention, absl::Hours(24));
  // Client-certificate revocation: the CRL comes from rkl-ca, refreshed every minute.
  EXPECT_EQ(s.crl.ca_endpoint, "ca:50051");
  EXPECT_EQ(s.crl.ca_authority, "ca");
  EXPECT_EQ(s.crl.refresh_interval, absl::Seconds(60));
  EXPECT_EQ(s.crl.tls.cert_file, s.server.tls.cert_file);
  EXPECT_EQ(s.core.lockout_threshold, 100);
  EXPECT_EQ(s.core.backoff_base, absl::Seconds(1));
  EXPECT_EQ(s.core.backoff_max, absl::Minutes(10));
  // Terminal RPC budgets: 100/s (burst 200) per source address, 1/s (burst 20) per SN.
  EXPECT_DOUBLE_EQ(s.terminal_limits.per_source.per_second, 100);
  EXPECT_DOUBLE_EQ(s.terminal_limits.per_source.burst, 200);
  EXPECT_DOUBLE_EQ(s.terminal_limits.per_subject.per_second, 1);
  EXPECT_DOUBLE_EQ(s.terminal_limits.per_subject.burst, 20);
  EXPECT_EQ(s.core.pk_index, 7u);
  EXPECT_EQ(s.core.mak_index, 8u);
  EXPECT_EQ(s.hsm_target, "localhost:50053");
  EXPECT_EQ(s.hsm_channel.authority, "hsm-kms");
  EXPECT_THAT(config->Describe(), ::testing::Not(HasSubstr("hunter2")));
  // TR-34 is off unless configured: no KRD CA, no CA endpoint.
  EXPECT_TRUE(s.core.krd_cas.empty());
  EXPECT_EQ(s.core.kdh_hsm_id, "hsm-kms");
  EXPECT_EQ(s.core.crl_refresh_margin, absl::Minutes(10));
  EXPECT_EQ(s.core.crl_max_age, absl::Minutes(1));
  EXPECT_EQ(s.ca_target, "");
  EXPECT_EQ(s.ca_channel.authority, "ca");
  EXPECT_EQ(s.ca_timeout, absl::Seconds(5));
}

// A self-signed certificate, CA or not, as PEM.
std::string SelfSignedPem(bool is_ca) {
  auto key = crypto::GenerateRsaKey(2048);
  EXPECT_TRUE(key.ok());
  auto cert = crypto::CertificateBuilder()
                  .SetSubjectCommonName(is_ca ? "KRD CA" : "not a CA")
                  .SetSerial({0x01})
                  .SetValidity(1'700'000'000, 1'900'000'000)
                  .SetBasicConstraints(is_ca, std::nullopt)
                  .SelfSign(*key);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return cert->ToPem();
}

TEST_F(TlsFilesFixture, Tr34ReadsTheKrdCasTheHsmIdAndTheCaEndpoint) {
  WriteFile("krd-ca-1.pem", SelfSignedPem(true), 0644);
  WriteFile("krd-ca-2.pem", SelfSignedPem(true), 0644);
  ConfigSchema schema = MakeKmsConfigSchema();
  auto config = LoadConfigFromYaml(
      schema,
      TlsYaml("pk_index: 7, mak_index: 8, ") + "db: {dsn: 'dbname=x'}\n" +
          "tr34: {krd_ca_files: '" + dir_ + "/krd-ca-1.pem, " + dir_ +
          "/krd-ca-2.pem', kdh_hsm_id: hsm-two}\nca: {endpoint: 'ca:50051', authority: rkl-ca}\n",
      NoEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<KmsSettings> s = KmsSettingsFromConfig(*config);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->core.krd_cas.size(), 2u);
  EXPECT_EQ(s->core.kdh_hsm_id, "hsm-two");
  EXPECT_EQ(s->ca_target, "ca:50051");
  EXPECT_EQ(s->ca_channel.authority, "rkl-ca");
  // KMS calls the CA with its own client identity, as it calls HSM #2.
  EXPECT_EQ(s->ca_channel.tls.cert_file, s->hsm_channel.tls.cert_file);
}

TEST_F(TlsFilesFixture, Tr34KrdCaFilesMustBeReadableCaCertificates) {
  WriteFile("leaf.pem", SelfSignedPem(false), 0644);
  for (const std::string& file : {dir_ + "/missing.pem", dir_ + "/leaf.pem", dir_ + "/ca.pem"}) {
    SCOPED_TRACE(file);
    ConfigSchema schema = MakeKmsConfigSchema();
    auto config =
        LoadConfigFromYaml(schema,
                           TlsYaml("pk_index: 7, mak_index: 8, ") +
                               "db: {dsn: 'dbname=x'}\ntr34: {krd_ca_files: '" + file + "'}\n",
                           NoEnv());
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<KmsSettings> s = KmsSettingsFromConfig(*config);
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(s.status().message(), HasSubstr("tr34.krd_ca_files"));
  }
}

TEST(KmsConfigTest, MissingIndexesAndDsnAreNamed) {
  ConfigSchema schema = MakeKmsConfigSchema();
  auto config = LoadConfigFromYaml(schema, "lockout: {threshold: 0}\n", NoEnv());
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("db.dsn"));
  EXPECT_THAT(config.status().message(), HasSubstr("hsm.pk_index"));
  EXPECT_THAT(config.status().message(), HasSubstr("hsm.mak_index"));
  EXPECT_THAT(config.status().message(), HasSubstr("lockout.threshold"));
}

TEST_F(TlsFilesFixture, EnvironmentOverridesUseThePrefix) {
  ConfigSchema schema = MakeKmsConfigSchema();
  auto config = LoadConfigFromYaml(schema, TlsYaml(), [](const std::string& name) {
    if (name == "RKL_KMS_DB_DSN") return std::optional<std::string>("dbname=x");
    if (name == "RKL_KMS_HSM_PK_INDEX") return std::optional<std::string>("3");
    if (name == "RKL_KMS_HSM_MAK_INDEX") return std::optional<std::string>("4");
    if (name == "RKL_KMS_SESSION_TTL") return std::optional<std::string>("30s");
    return std::optional<std::string>();
  });
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(KmsSettingsFromConfig(*config).value().core.session_ttl, absl::Seconds(30));
}

TEST_F(TlsFilesFixture, ARetentionShorterThanTheSessionTtlIsNamed) {
  ConfigSchema schema = MakeKmsConfigSchema();
  auto config =
      LoadConfigFromYaml(schema,
                         TlsYaml("pk_index: 7, mak_index: 8, ") +
                             "db: {dsn: 'dbname=x'}\nsession: {ttl: 60s, retention: 30s}\n",
                         NoEnv());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<KmsSettings> s = KmsSettingsFromConfig(*config);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("session.retention"));
}

}  // namespace
}  // namespace rkl::kms
