#include "rkl/common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace rkl {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// A schema shaped like a daemon's, with one key of every type.
class ConfigTest : public ::testing::Test {
 protected:
  ConfigTest() : schema_("RKL_TEST") {
    schema_.String("listen", "address to listen on").Default("0.0.0.0:50052");
    schema_.Path("tls.cert_file", "service certificate (PEM)").Required();
    schema_.Int("db.pool_size", "connections in the pool").Range(1, 256).Default("8");
    schema_.Bool("reflection", "serve gRPC reflection").Default("true");
    schema_.Duration("rpc.timeout", "deadline for outgoing calls").Default("30s");
    schema_.Enum("log.format", {"text", "json"}, "log line format").Default("text");
    schema_.String("db.password", "database password").Secret();
    existing_file_ = std::filesystem::temp_directory_path() / "rkl_config_test_cert.pem";
    std::ofstream(existing_file_) << "x";
  }
  ~ConfigTest() override { std::filesystem::remove(existing_file_); }

  std::string CertLine() { return "tls:\n  cert_file: " + existing_file_.string() + "\n"; }

  // Why loading `yaml` (with `env`) fails; a load that does not fail is a test failure.
  absl::Status Refusal(const std::string& yaml, EnvLookup env = FakeEnv({})) {
    auto config = LoadConfigFromYaml(schema_, yaml, std::move(env));
    EXPECT_FALSE(config.ok());
    return config.status();
  }

  ConfigSchema schema_;
  std::filesystem::path existing_file_;
};

TEST_F(ConfigTest, DefaultsApplyAndTypedGettersWork) {
  auto config = LoadConfigFromYaml(schema_, CertLine(), FakeEnv({}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->GetString("listen"), "0.0.0.0:50052");
  EXPECT_EQ(config->GetPath("tls.cert_file"), existing_file_.string());
  EXPECT_EQ(config->GetInt("db.pool_size"), 8);
  EXPECT_TRUE(config->GetBool("reflection"));
  EXPECT_EQ(config->GetDuration("rpc.timeout"), absl::Seconds(30));
  EXPECT_EQ(config->GetEnum("log.format"), "text");
  EXPECT_FALSE(config->Has("db.password"));
}

TEST_F(ConfigTest, EnvironmentOverridesFileOverridesDefault) {
  std::string yaml = CertLine() + "db:\n  pool_size: 16\nrpc:\n  timeout: 500ms\n";
  auto config = LoadConfigFromYaml(
      schema_, yaml, FakeEnv({{"RKL_TEST_DB_POOL_SIZE", "32"}, {"RKL_TEST_LOG_FORMAT", "json"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->GetInt("db.pool_size"), 32);                           // env beats file
  EXPECT_EQ(config->GetDuration("rpc.timeout"), absl::Milliseconds(500));  // file beats default
  EXPECT_EQ(config->GetEnum("log.format"), "json");                        // env beats default
  EXPECT_THAT(config->Describe(), HasSubstr("db.pool_size = 32  (environment)"));
  EXPECT_THAT(config->Describe(), HasSubstr("rpc.timeout = 500ms  (file)"));
}

TEST_F(ConfigTest, EnvironmentAloneCanSatisfyRequiredKey) {
  auto config = LoadConfigFromYaml(schema_, "",
                                   FakeEnv({{"RKL_TEST_TLS_CERT_FILE", existing_file_.string()}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->GetPath("tls.cert_file"), existing_file_.string());
}

TEST_F(ConfigTest, EnvVarNamesFollowPrefixAndKey) {
  EXPECT_EQ(schema_.Find("tls.cert_file")->env_var(), "RKL_TEST_TLS_CERT_FILE");
  EXPECT_EQ(schema_.Find("db.pool_size")->env_var(), "RKL_TEST_DB_POOL_SIZE");
}

TEST_F(ConfigTest, UnknownKeyIsAnError) {
  absl::Status refusal = Refusal(CertLine() + "dbx:\n  pool: 3\n");
  EXPECT_EQ(refusal.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refusal.message(), HasSubstr("config: dbx.pool: unknown key"));
}

TEST_F(ConfigTest, MissingRequiredKey) {
  EXPECT_THAT(Refusal("listen: ':1'\n").message(), HasSubstr("config: tls.cert_file: required"));
}

TEST_F(ConfigTest, OutOfRangeInt) {
  EXPECT_THAT(Refusal(CertLine() + "db:\n  pool_size: 0\n").message(),
              HasSubstr("config: db.pool_size: must be between 1 and 256, got 0"));
}

TEST_F(ConfigTest, BadDurationAndBareNumberRefused) {
  for (std::string bad : {"30", "soon", "-1s", "inf"}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(Refusal(CertLine() + "rpc:\n  timeout: " + bad + "\n").message(),
                HasSubstr("config: rpc.timeout: must"));
  }
  auto ok = LoadConfigFromYaml(schema_, CertLine() + "rpc:\n  timeout: 1m30s\n", FakeEnv({}));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->GetDuration("rpc.timeout"), absl::Seconds(90));
}

TEST_F(ConfigTest, AllErrorsReportedTogether) {
  std::string yaml =
      "db:\n  pool_size: 0\nrpc:\n  timeout: 30\nlog:\n  format: xml\nreflection: maybe\n"
      "bogus: 1\n";
  const std::string msg(Refusal(yaml, FakeEnv({{"RKL_TEST_LISTEN", "ignored-is-fine"}})).message());
  for (const char* finding : {"config: bogus: unknown key", "config: tls.cert_file: required",
                              "config: db.pool_size: must be between 1 and 256, got 0",
                              "config: rpc.timeout: must be a duration like 30s or 500ms",
                              "config: log.format: must be one of text, json; got 'xml'",
                              "config: reflection: must be true or false, got 'maybe'"}) {
    EXPECT_THAT(msg, HasSubstr(finding));
  }
  EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 5);  // six lines
}

TEST_F(ConfigTest, ErrorsFromEnvironmentNameTheVariable) {
  EXPECT_THAT(Refusal(CertLine(), FakeEnv({{"RKL_TEST_DB_POOL_SIZE", "1000"}})).message(),
              HasSubstr("config: db.pool_size: must be between 1 and 256, got 1000 "
                        "(from RKL_TEST_DB_POOL_SIZE)"));
}

TEST_F(ConfigTest, PathMustExist) {
  EXPECT_THAT(Refusal("tls:\n  cert_file: /nonexistent/rkl/cert.pem\n").message(),
              HasSubstr("config: tls.cert_file: path '/nonexistent/rkl/cert.pem' does not exist"));
}

TEST_F(ConfigTest, ValueGivenAsMapOrListIsRefused) {
  EXPECT_THAT(Refusal(CertLine() + "listen:\n  - a\n  - b\n").message(),
              HasSubstr("config: listen: must be a single value"));
}

TEST_F(ConfigTest, InvalidYamlIsReported) {
  EXPECT_THAT(Refusal("a: [unclosed\n").message(), HasSubstr("not valid YAML"));
}

TEST_F(ConfigTest, LoadsFromFileAndReportsUnreadableFile) {
  auto path = std::filesystem::temp_directory_path() / "rkl_config_test.yaml";
  std::ofstream(path) << CertLine() << "db:\n  pool_size: 4\n";
  auto config = LoadConfig(schema_, path.string(), FakeEnv({}));
  std::filesystem::remove(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->GetInt("db.pool_size"), 4);

  auto missing = LoadConfig(schema_, "/nonexistent/rkl.yaml", FakeEnv({}));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              HasSubstr("config: /nonexistent/rkl.yaml: cannot read the configuration file"));
}

TEST_F(ConfigTest, SecretsAreNeverPrinted) {
  schema_.String("db.dsn_password", "another secret").Secret().Default("hunter2-default");
  schema_.Int("db.secret_pin", "secret int").Secret().Range(0, 9);
  absl::Status refusal = Refusal(CertLine() + "db:\n  password: hunter2\n  secret_pin: 12345\n");
  EXPECT_THAT(refusal.message(), Not(HasSubstr("12345")));
  EXPECT_THAT(refusal.message(), HasSubstr("config: db.secret_pin: must be between"));

  auto good = LoadConfigFromYaml(schema_, CertLine() + "db:\n  password: hunter2\n", FakeEnv({}));
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->GetString("db.password"), "hunter2");
  EXPECT_THAT(good->Describe(),
              AllOf(Not(HasSubstr("hunter2")), HasSubstr("db.password = <secret>")));
  for (auto format : {ReferenceFormat::kText, ReferenceFormat::kMarkdown}) {
    EXPECT_THAT(RenderConfigReference(schema_, format), Not(HasSubstr("hunter2-default")));
  }
}

TEST_F(ConfigTest, ReferenceListsKeyTypeDefaultEnvAndDescription) {
  std::string text = RenderConfigReference(schema_);
  EXPECT_THAT(text, HasSubstr("db.pool_size  (int [1..256])"));
  EXPECT_THAT(text, HasSubstr("default: 8"));
  EXPECT_THAT(text, HasSubstr("env:     RKL_TEST_DB_POOL_SIZE"));
  EXPECT_THAT(text, HasSubstr("connections in the pool"));
  EXPECT_THAT(text, HasSubstr("tls.cert_file  (path)\n    default: (required)"));

  std::string md = RenderConfigReference(schema_, ReferenceFormat::kMarkdown);
  EXPECT_THAT(md, HasSubstr("| key | type | default | environment | description |"));
  EXPECT_THAT(md,
              HasSubstr("| `log.format` | enum {text\\|json} | `text` | `RKL_TEST_LOG_FORMAT` | "
                        "log line format |"));
}

TEST_F(ConfigTest, GetterMisuseIsAProgrammingError) {
  auto config = LoadConfigFromYaml(schema_, CertLine(), FakeEnv({}));
  ASSERT_TRUE(config.ok());
  EXPECT_THROW(config->GetInt("listen"), std::logic_error);
  EXPECT_THROW(config->GetString("no.such.key"), std::logic_error);
  EXPECT_THROW(schema_.Int("listen", "duplicate"), std::logic_error);
  EXPECT_THROW(schema_.Int("tls", "overlaps tls.cert_file"), std::logic_error);
  EXPECT_THROW(schema_.Int("Bad Key", "bad name"), std::logic_error);
}

TEST_F(ConfigTest, LoadConfigOrExitFailsFatallyNamingEveryProblem) {
  const char* argv[] = {"rkl-test", "--config=/nonexistent/rkl.yaml"};
  EXPECT_EXIT(LoadConfigOrExit(schema_, "rkl-test", 2, argv), ::testing::ExitedWithCode(2),
              "rkl-test: fatal: invalid configuration.*\n.*cannot read.*\n.*"
              "tls.cert_file: required");
}

TEST_F(ConfigTest, LoadConfigOrExitPrintsReference) {
  const char* argv[] = {"rkl-test", "--print-config-reference=markdown"};
  EXPECT_EXIT(
      {
        LoadConfigOrExit(schema_, "rkl-test", 2, argv);
        std::exit(1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(ConfigTest, LoadConfigOrExitTakesTheProgramsOwnSwitches) {
  auto path = std::filesystem::temp_directory_path() / "rkl_config_switch_test.yaml";
  std::ofstream(path) << CertLine();
  const std::string config_arg = "--config=" + path.string();
  bool migrate_only = true;  // reset when the switch is absent
  const char* plain[] = {"rkl-test", config_arg.c_str()};
  LoadConfigOrExit(
      schema_, "rkl-test", 2, plain,
      {{.name = "--migrate-only", .help = "migrate and exit", .value = &migrate_only}});
  EXPECT_FALSE(migrate_only);
  const char* with_switch[] = {"rkl-test", "--migrate-only", config_arg.c_str()};
  LoadConfigOrExit(
      schema_, "rkl-test", 3, with_switch,
      {{.name = "--migrate-only", .help = "migrate and exit", .value = &migrate_only}});
  EXPECT_TRUE(migrate_only);
  // A switch another program takes is still an unknown argument here.
  EXPECT_EXIT(LoadConfigOrExit(schema_, "rkl-test", 3, with_switch), ::testing::ExitedWithCode(2),
              "unknown argument '--migrate-only'");
  std::filesystem::remove(path);
}

TEST_F(ConfigTest, ASchemaCheckingOnlySomeKeysStillKnowsTheOthers) {
  ConfigSchema narrowed = schema_.CheckingOnly({"db."});
  // tls.cert_file is required and must exist, but is not checked any more; db.* still is.
  auto config = LoadConfigFromYaml(narrowed, "tls:\n  cert_file: /nonexistent\n", FakeEnv({}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->GetInt("db.pool_size"), 8);
  EXPECT_EQ(config->GetString("tls.cert_file"), "/nonexistent");
  auto bad_db = LoadConfigFromYaml(narrowed, "db:\n  pool_size: 0\n", FakeEnv({}));
  EXPECT_FALSE(bad_db.ok());
  EXPECT_THAT(bad_db.status().message(), HasSubstr("config: db.pool_size: must be between"));
  auto unknown = LoadConfigFromYaml(narrowed, "dbx:\n  pool: 3\n", FakeEnv({}));
  EXPECT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("config: dbx.pool: unknown key"));
  // The original schema is unchanged.
  EXPECT_FALSE(LoadConfigFromYaml(schema_, "", FakeEnv({})).ok());
}

}  // namespace
}  // namespace rkl
