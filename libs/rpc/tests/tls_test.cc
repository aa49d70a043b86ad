#include "rkl/rpc/tls.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "rkl/rpc/channel.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using ::testing::HasSubstr;
using testing::TestPki;

TEST(Tls, LoadsValidMaterial) {
  auto m = LoadTlsMaterial(TestPki::Get().Server(), true);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_THAT(m->cert_chain_pem, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_FALSE(m->ca_pem.empty());
}

TEST(Tls, MissingFileIsNamed) {
  TlsFiles files = TestPki::Get().Server();
  files.cert_file = "/nonexistent/kms.pem";
  auto m = LoadTlsMaterial(files, true);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.status().message(), "tls.cert_file /nonexistent/kms.pem: file does not exist");
}

TEST(Tls, NonPemAndMismatchedKeyAreReported) {
  std::string junk = TestPki::Get().dir() + "/junk.pem";
  std::ofstream(junk) << "not a certificate\n";
  TlsFiles files = TestPki::Get().Server();
  files.ca_file = junk;
  auto not_pem = LoadTlsMaterial(files, true);
  ASSERT_FALSE(not_pem.ok());
  EXPECT_THAT(not_pem.status().message(), HasSubstr("tls.ca_file " + junk));

  files = TestPki::Get().Server();
  files.key_file = TestPki::Get().Client("mtms").key_file;
  auto mismatch = LoadTlsMaterial(files, true);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(mismatch.status().message(), HasSubstr("does not match the certificate"));
}

TEST(Tls, CertAndKeyGoTogether) {
  TlsFiles files = TestPki::Get().Client("mtms");
  files.key_file.clear();
  EXPECT_EQ(LoadTlsMaterial(files, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LoadTlsMaterial(TestPki::Get().AnonymousClient(), false).ok());
  EXPECT_FALSE(LoadTlsMaterial(TestPki::Get().AnonymousClient(), true).ok());
}

TEST(Tls, ChannelReportsTlsErrorsUpFront) {
  ChannelOptions options;
  options.tls = {"", "", "/nonexistent/ca.pem"};
  auto channel = MakeChannel("dns:///kms:50055", options);
  ASSERT_FALSE(channel.ok());
  EXPECT_THAT(channel.status().message(), HasSubstr("tls.ca_file /nonexistent/ca.pem"));

  options.tls = TestPki::Get().Client("mtms");
  options.round_robin = true;
  EXPECT_TRUE(MakeChannel("dns:///kms:50055", options).ok());
}

TEST(Tls, ConfigKeysAreDeclaredAndRead) {
  ConfigSchema schema("RKL_KMS");
  DeclareTlsConfig(schema);
  EXPECT_EQ(schema.Find("tls.cert_file")->env_var(), "RKL_KMS_TLS_CERT_FILE");
  TlsFiles want = TestPki::Get().Server();
  auto config =
      LoadConfigFromYaml(schema,
                         "tls:\n  cert_file: " + want.cert_file + "\n  key_file: " + want.key_file +
                             "\n  ca_file: " + want.ca_file + "\n",
                         [](const std::string&) { return std::nullopt; });
  ASSERT_TRUE(config.ok()) << config.status();
  TlsFiles got = TlsFilesFromConfig(*config);
  EXPECT_EQ(got.cert_file, want.cert_file);
  EXPECT_EQ(got.key_file, want.key_file);
  EXPECT_EQ(got.ca_file, want.ca_file);

  auto missing = LoadConfigFromYaml(schema, "", [](const std::string&) { return std::nullopt; });
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("config: tls.cert_file: required"));
}

}  // namespace
}  // namespace rkl::rpc
