// The simulator against MTMS and KMS fakes served over real gRPC with TLS: the gRPC
// clients, the provision flow, the fleet runner and the CLI, end to end in one process.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli_harness.h"
#include "clients.h"
#include "fakes.h"
#include "files.h"
#include "provision.h"
#include "rkl/common/logging.h"
#include "rkl/common/request_id.h"
#include "rkl/rpc/call_context.h"
#include "spdlog/spdlog.h"

namespace rkl::pos {
namespace {

using testing::CliHarness;
using testing::Concat;
using testing::FakeServersTest;
using ::testing::HasSubstr;
using testing::TerminalPki;

class GrpcFlowTest : public FakeServersTest {
 protected:
  std::shared_ptr<grpc::Channel> Channel(const std::string& target, rpc::TlsFiles tls) {
    auto channel = MakePosChannel({target, "localhost", tls});
    EXPECT_TRUE(channel.ok()) << channel.status();
    return *channel;
  }
  rpc::TlsFiles Anonymous() { return servers_->pki().Anonymous(); }

  testing::TempDir dir_;
};

TEST_F(GrpcFlowTest, ProvisionAndFleetOverTls) {
  GrpcMtmsClient mtms(Channel(servers_->mtms_target(), Anonymous()));
  GrpcKmsClient kms(Channel(servers_->kms_target(), Anonymous()));
  GrpcKmsClient admin(Channel(servers_->kms_target(), servers_->admin_tls()));
  auto card = OperatorCard::Open(TerminalPki::Get().operator_p12,
                                 crypto::SecretBytes::CopyOf(AsBytes(testing::kTestPin)));
  ASSERT_TRUE(card.ok());
  OperatorTerminal op(mtms, &*card, testing::RealClock());
  ProvisionContext ctx{.state_dir = dir_.path(),
                       .terminal_root = &TerminalPki::Get().root,
                       .operator_terminal = &op,
                       .kms = &kms,
                       .forwarding = {},
                       .clock = testing::RealClock(),
                       .sleep = SleepFor};

  StepRecorder steps;
  auto one = ProvisionTerminal(ctx, "ONE-1", steps);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->kms_state, "TERMINAL_STATE_INSTALLED");
  std::vector<std::string> names;
  for (const auto& [name, d] : steps.steps()) names.push_back(name);
  EXPECT_THAT(names, ::testing::ElementsAre("manufacture", "install-cert", "generate-tk", "submit",
                                            "forwarding-wait", "download-tmk"));
  auto view = admin.GetTerminal("ONE-1");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->state, "TERMINAL_STATE_INSTALLED");
  EXPECT_EQ(view->tmk_kcv, one->terminal.tmk_kcv);

  // Provisioning it again is refused, and changes nothing.
  StepRecorder again;
  EXPECT_EQ(ProvisionTerminal(ctx, "ONE-1", again).status().code(),
            absl::StatusCode::kFailedPrecondition);

  servers_->kms().set_forwarding_delay(2);
  FleetSummary s = RunFleet({.count = 24, .concurrency = 6}, [&](int i, StepRecorder& st) {
    return ProvisionTerminal(ctx, absl::StrCat("FL-", i), st).status();
  });
  EXPECT_EQ(s.succeeded, 24) << FormatSummaryText(s);
  auto listed = admin.ListTerminals("FL-");
  ASSERT_TRUE(listed.ok()) << listed.status();
  int installed = 0;
  for (const auto& v : *listed) installed += v.state == "TERMINAL_STATE_INSTALLED";
  EXPECT_EQ(installed, 24);
}

TEST_F(GrpcFlowTest, AdminRpcNeedsAnAdminCertificate) {
  GrpcKmsClient anonymous(Channel(servers_->kms_target(), Anonymous()));
  EXPECT_EQ(anonymous.ListTerminals("").status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(GrpcFlowTest, ServerCertificateMustChainToTheCaBundle) {
  // Trusting the terminal root instead of service-ca: the TLS handshake fails.
  const std::string wrong_ca = dir_.path() + "/wrong-ca.pem";
  const std::string pem = TerminalPki::Get().root.ToPem();
  ASSERT_TRUE(WriteFileAtomically(wrong_ca, Bytes(pem.begin(), pem.end()), 0644).ok());
  GrpcMtmsClient mtms(Channel(servers_->mtms_target(), {"", "", wrong_ca}), absl::Seconds(5));
  EXPECT_EQ(mtms.GetWorkCertificate().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(GrpcFlowTest, CliStepByStepThenStatus) {
  CliHarness cli(*servers_);
  const std::vector<std::string> sn = {"--sn", "CLI-1"};
  auto r = cli.Run(
      Concat({{"manufacture"}, sn, cli.StateFlags(), cli.RootFlags(), {"--algorithm", "TDES2"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("MANUFACTURED"));
  r = cli.Run(Concat({{"install-cert"}, sn, cli.StateFlags(), cli.MtmsFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(TerminalPki::Get().work.SerialHex()));
  r = cli.Run(Concat({{"generate-tk"}, sn, cli.StateFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cli.Run(Concat({{"submit"}, sn, cli.StateFlags(), cli.MtmsFlags(), cli.CardFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("sub-"));
  r = cli.Run(Concat({{"download-tmk"}, sn, cli.StateFlags(), cli.KmsFlags(), cli.AdminFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("INSTALLED"));
  EXPECT_THAT(r.out, HasSubstr("kms (admin)   TERMINAL_STATE_INSTALLED"));
  r = cli.Run(Concat({{"status"}, cli.StateFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("CLI-1"));
  EXPECT_THAT(r.out, HasSubstr("TDES2"));
}

TEST_F(GrpcFlowTest, CliProvisionAndFleetWithJson) {
  CliHarness cli(*servers_);
  auto r = cli.Run(Concat({{"provision", "--sn", "P-1"}, cli.AllStepsFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("step download-tmk"));
  EXPECT_THAT(r.out, HasSubstr("TERMINAL_STATE_INSTALLED"));

  const std::string json = cli.dir() + "/fleet.json";
  r = cli.Run(Concat({{"fleet", "--count", "12", "--concurrency", "4", "--prefix", "CF", "--json",
                       json, "--progress", "plain"},
                      cli.AllStepsFlags()}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("CF-000001 .. CF-000012"));
  EXPECT_THAT(r.out, HasSubstr("12 succeeded, 0 failed"));
  EXPECT_THAT(r.out, HasSubstr("verified at KMS (admin RPC): 12 of 12"));
  EXPECT_THAT(r.err, HasSubstr("fleet: 12/12 done"));
  auto text = ReadFileText(json);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("\"succeeded\":12"));
  EXPECT_THAT(*text, HasSubstr("\"kms_verified_installed\":12"));
  EXPECT_THAT(*text, HasSubstr("\"download-tmk\":{\"count\":12"));
}

TEST_F(GrpcFlowTest, CliFleetReportsFailuresByReasonAndFails) {
  CliHarness cli(*servers_);
  servers_->kms().set_misbehaviour(testing::KmsMisbehaviour::kBadMac);
  auto r = cli.Run(Concat(
      {{"fleet", "--count", "5", "--concurrency", "2", "--prefix", "BAD", "--progress", "none"},
       cli.AllStepsFlags()}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("0 succeeded, 5 failed"));
  EXPECT_THAT(r.out, HasSubstr("5  download-tmk: UNAUTHENTICATED: key_block: refused"));
  EXPECT_THAT(r.out, HasSubstr("0 of 5 terminals INSTALLED"));
}

TEST_F(GrpcFlowTest, CliRefusesAWrongPinAndMissingFlags) {
  CliHarness cli(*servers_);
  auto r = cli.Run(Concat({{"manufacture", "--sn", "W-1"}, cli.StateFlags()}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--terminal-root (or RKL_POS_TERMINAL_ROOT) is required"));

  ASSERT_EQ(cli.Run(Concat({{"manufacture", "--sn", "W-1"}, cli.StateFlags(), cli.RootFlags()}))
                .exit_code,
            0);
  ASSERT_EQ(cli.Run(Concat({{"install-cert", "--sn", "W-1"}, cli.StateFlags(), cli.MtmsFlags()}))
                .exit_code,
            0);
  ASSERT_EQ(cli.Run(Concat({{"generate-tk", "--sn", "W-1"}, cli.StateFlags()})).exit_code, 0);
  const std::string bad_pin = cli.dir() + "/bad-pin";
  ASSERT_TRUE(WriteFileAtomically(bad_pin, Bytes{'1', '2', '3', '4'}, 0600).ok());
  r = cli.Run(
      Concat({{"submit", "--sn", "W-1"},
              cli.StateFlags(),
              cli.MtmsFlags(),
              {"--operator-card", cli.dir() + "/operator.p12", "--operator-pin-file", bad_pin}}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED: operator_card: wrong PIN"));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("1234")));

  r = cli.Run({"fleet", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--concurrency"));
  r = cli.Run({"no-such-command"});
  EXPECT_EQ(r.exit_code, 2);
  r = cli.Run({"status", "--count", "3"});  // a flag of another command
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(GrpcFlowTest, CliInstallCertRefusesAForeignWorkCertificate) {
  CliHarness cli(*servers_);
  ASSERT_EQ(cli.Run(Concat({{"manufacture", "--sn", "X-1"}, cli.StateFlags(), cli.RootFlags()}))
                .exit_code,
            0);
  const std::string file = cli.state_dir() + "/X-1/secure_module.sealed";
  const Bytes before = testing::FileBytes(file);
  servers_->mtms().set_work_certificate(TerminalPki::Get().work_other_issuer);
  auto r = cli.Run(Concat({{"install-cert", "--sn", "X-1"}, cli.StateFlags(), cli.MtmsFlags()}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED: work_certificate: does not chain"));
  EXPECT_EQ(testing::FileBytes(file), before);
}

TEST_F(GrpcFlowTest, EachTerminalFlowSendsOneRequestIdOnEveryCallAndLogsIt) {
  GrpcMtmsClient mtms(Channel(servers_->mtms_target(), Anonymous()));
  GrpcKmsClient kms(Channel(servers_->kms_target(), Anonymous()));
  auto card = OperatorCard::Open(TerminalPki::Get().operator_p12,
                                 crypto::SecretBytes::CopyOf(AsBytes(testing::kTestPin)));
  ASSERT_TRUE(card.ok());
  OperatorTerminal op(mtms, &*card, testing::RealClock());
  ProvisionContext ctx{.state_dir = dir_.path(),
                       .terminal_root = &TerminalPki::Get().root,
                       .operator_terminal = &op,
                       .kms = &kms,
                       .forwarding = {},
                       .clock = testing::RealClock(),
                       .sleep = SleepFor};
  InitLogging({.format = LogFormat::kText, .program = "rkl-pos"});
  std::map<std::string, std::string> logged;  // SN -> the id its "flow starts" line names
  std::map<std::string, std::set<std::string>> sent;
  for (const std::string sn : {"RID-1", "RID-2"}) {
    servers_->calls().Clear();
    ::testing::internal::CaptureStderr();
    StepRecorder steps;
    auto r = ProvisionTerminalWithRetry(ctx, sn, steps, TransientRetry{});
    spdlog::default_logger()->flush();
    const std::string err = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(r.ok()) << r.status();
    const std::string marker = absl::StrCat("terminal ", sn, ": flow starts request_id=");
    const size_t at = err.find(marker);
    ASSERT_NE(at, std::string::npos) << err;
    logged[sn] = err.substr(at + marker.size(), 32);
    std::set<std::string> methods;
    for (const auto& call : servers_->calls().calls()) {
      sent[sn].insert(call.request_id);
      methods.insert(call.method);
    }
    EXPECT_THAT(methods, ::testing::IsSupersetOf({"GetWorkCertificate", "SubmitTransportKey",
                                                  "BeginAuthentication", "CompleteAuthentication",
                                                  "ConfirmInstallation"}));
  }
  for (const std::string sn : {"RID-1", "RID-2"}) {
    EXPECT_TRUE(rpc::IsWellFormedRequestId(logged[sn])) << logged[sn];
    EXPECT_EQ(sent[sn], std::set<std::string>{logged[sn]}) << sn;
  }
  EXPECT_NE(logged["RID-1"], logged["RID-2"]);
  EXPECT_EQ(CurrentRequestId(), "");  // the flow's id does not outlive it
}

TEST_F(GrpcFlowTest, AFailedFlowIsLoggedWithItsRequestId) {
  ProvisionContext ctx{.state_dir = dir_.path(),
                       .terminal_root = &TerminalPki::Get().root,
                       .operator_terminal = nullptr,  // no MTMS: the flow cannot start
                       .kms = nullptr,
                       .forwarding = {},
                       .clock = testing::RealClock(),
                       .sleep = SleepFor};
  InitLogging({.format = LogFormat::kText, .program = "rkl-pos"});
  ::testing::internal::CaptureStderr();
  StepRecorder steps;
  auto r = ProvisionTerminalWithRetry(ctx, "RID-F", steps, TransientRetry{});
  spdlog::default_logger()->flush();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string start = "terminal RID-F: flow starts request_id=";
  const size_t at = err.find(start);
  ASSERT_NE(at, std::string::npos) << err;
  const std::string id = err.substr(at + start.size(), 32);
  EXPECT_THAT(err, HasSubstr(absl::StrCat("terminal RID-F: flow failed at -: INVALID_ARGUMENT: "
                                          "provision: MTMS and KMS connections are required "
                                          "request_id=",
                                          id, "\n")));
}

}  // namespace
}  // namespace rkl::pos
