#include "rkl/rpc/server.h"

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/echo_service.h"
#include "rkl/rpc/health.h"
#include "rkl/rpc/shutdown.h"
#include "rkl/rpc/status.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TestPki;

constexpr absl::Duration kTimeout = absl::Seconds(10);

class ServerTest : public ::testing::Test {
 protected:
  void StartServer(ClientCertMode mode, const Authorizer* authorizer = nullptr) {
    echo_ = std::make_unique<EchoService>(authorizer);
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.tls = TestPki::Get().Server();
    options.client_cert_mode = mode;
    auto server = Server::Start(options, {echo_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
  }

  std::shared_ptr<grpc::Channel> Channel(const TlsFiles& tls) {
    ChannelOptions options;
    options.tls = tls;
    options.authority = "localhost";
    auto channel = MakeChannel("127.0.0.1:" + std::to_string(server_->port()), options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return channel.ok() ? *channel : nullptr;
  }

  // Calls Echo; on success returns the identity the server saw.
  absl::StatusOr<std::string> CallEcho(const TlsFiles& tls, const std::string& payload = "ping",
                                       const std::string& request_id = "") {
    auto stub = rkl::v1::Echo::NewStub(Channel(tls));
    auto ctx = MakeClientContext(kTimeout, request_id);
    rkl::v1::EchoRequest req;
    req.set_payload(payload);
    rkl::v1::EchoResponse resp;
    grpc::Status status = stub->Echo(ctx.get(), req, &resp);
    last_response_request_id_ = ResponseRequestId(*ctx);
    if (!status.ok()) return FromGrpcStatus(status);
    EXPECT_EQ(resp.payload(), payload);
    return resp.caller_identity();
  }

  // Echo from `tls` succeeds and the server saw `identity`.
  void ExpectIdentity(const TlsFiles& tls, const std::string& identity) {
    auto seen = CallEcho(tls);
    ASSERT_TRUE(seen.ok()) << seen.status();
    EXPECT_EQ(*seen, identity);
  }

  // The TLS handshake from `tls` fails, so the call is UNAVAILABLE.
  void ExpectRefused(const TlsFiles& tls) {
    auto seen = CallEcho(tls);
    ASSERT_FALSE(seen.ok());
    EXPECT_EQ(seen.status().code(), absl::StatusCode::kUnavailable) << seen.status();
  }

  std::unique_ptr<EchoService> echo_;
  std::unique_ptr<Server> server_;
  std::string last_response_request_id_;
};

TEST_F(ServerTest, MutualTlsClientIsIdentifiedByItsCertificate) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ExpectIdentity(TestPki::Get().Client("mtms"), "mtms");
  ExpectIdentity(TestPki::Get().Client("admin:alice"), "admin:alice");
}

TEST_F(ServerTest, ClientWithoutCertificateIsRejectedInMutualTlsMode) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ExpectRefused(TestPki::Get().AnonymousClient());
}

TEST_F(ServerTest, ClientCertificateFromForeignCaIsRejected) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ExpectRefused(TestPki::Get().ForeignClient());
}

TEST_F(ServerTest, CertificateWhoseCnIsNotItsSanHasNoIdentity) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ExpectIdentity(TestPki::Get().Client("mismatch"), "");
}

TEST_F(ServerTest, ServerAuthenticatedModeAcceptsAnonymousClients) {
  StartServer(ClientCertMode::kNone);
  ExpectIdentity(TestPki::Get().AnonymousClient(), "");
}

TEST_F(ServerTest, OptionalModeIdentifiesCertifiedCallersAndAdmitsAnonymousOnes) {
  StartServer(ClientCertMode::kOptionalVerified);
  ExpectIdentity(TestPki::Get().AnonymousClient(), "");
  ExpectIdentity(TestPki::Get().Client("mtms"), "mtms");
  // A presented certificate is still verified: a foreign CA does not get in.
  ExpectRefused(TestPki::Get().ForeignClient());
}

TEST_F(ServerTest, ClientRefusesServerWhoseNameDoesNotMatch) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ChannelOptions options;
  options.tls = TestPki::Get().Client("mtms");
  options.authority = "hsm-mtms";  // the server's certificate says kms/localhost
  auto channel = MakeChannel("127.0.0.1:" + std::to_string(server_->port()), options);
  ASSERT_TRUE(channel.ok());
  auto health = CheckHealth(*channel, "", kTimeout);
  EXPECT_FALSE(health.ok());
}

TEST_F(ServerTest, AuthorizerAllowsListedCallersAndDeniesOthers) {
  Authorizer authz;
  authz.Allow("Echo", {"mtms"});
  StartServer(ClientCertMode::kRequireAndVerify, &authz);

  EXPECT_TRUE(CallEcho(TestPki::Get().Client("mtms")).ok());
  auto denied = CallEcho(TestPki::Get().Client("admin:alice"));
  ASSERT_FALSE(denied.ok());
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(), "caller 'admin:alice' may not call Echo");
}

TEST_F(ServerTest, HealthReportsServingThenNotServing) {
  StartServer(ClientCertMode::kRequireAndVerify);
  server_->SetServing("rkl.v1.Echo", true);
  auto channel = Channel(TestPki::Get().Client("mtms"));

  auto overall = CheckHealth(channel, "", kTimeout);
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_TRUE(*overall);
  auto echo = CheckHealth(channel, "rkl.v1.Echo", kTimeout);
  ASSERT_TRUE(echo.ok()) << echo.status();
  EXPECT_TRUE(*echo);

  server_->SetServing("rkl.v1.Echo", false);
  echo = CheckHealth(channel, "rkl.v1.Echo", kTimeout);
  ASSERT_TRUE(echo.ok()) << echo.status();
  EXPECT_FALSE(*echo);

  server_->SetServing(false);
  overall = CheckHealth(channel, "", kTimeout);
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_FALSE(*overall);

  auto unknown = CheckHealth(channel, "rkl.v1.Nothing", kTimeout);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

// Asks grpc.reflection.v1alpha for the service list through the generic async API (Debian
// ships no generated reflection stubs) and returns the raw response bytes.
std::string ListServicesViaReflection(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  auto ctx = MakeClientContext(kTimeout);
  auto call = stub.PrepareCall(
      ctx.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](intptr_t expected) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  EXPECT_TRUE(step(1));
  // ServerReflectionRequest { list_services = 7: "*" }
  std::string request("\x3a\x01*", 3);
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  EXPECT_TRUE(step(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  EXPECT_TRUE(step(3));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  std::string bytes;
  if (step(4)) {
    grpc::Slice whole;
    EXPECT_TRUE(in.DumpToSingleSlice(&whole).ok());
    bytes.assign(reinterpret_cast<const char*>(whole.begin()), whole.size());
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  return bytes;
}

TEST_F(ServerTest, ReflectionListsRegisteredServices) {
  StartServer(ClientCertMode::kRequireAndVerify);
  std::string response = ListServicesViaReflection(Channel(TestPki::Get().Client("mtms")));
  EXPECT_THAT(response, HasSubstr("rkl.v1.Echo"));
  EXPECT_THAT(response, HasSubstr("grpc.health.v1.Health"));
}

TEST_F(ServerTest, RequestIdIsPropagatedOrGenerated) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ASSERT_TRUE(CallEcho(TestPki::Get().Client("mtms"), "x", "req-1234").ok());
  EXPECT_EQ(last_response_request_id_, "req-1234");

  // A malformed id (log injection attempt) is replaced by a fresh one.
  ASSERT_TRUE(CallEcho(TestPki::Get().Client("mtms"), "x", "bad id=forged caller=admin:x").ok());
  EXPECT_TRUE(IsWellFormedRequestId(last_response_request_id_)) << last_response_request_id_;
  EXPECT_EQ(last_response_request_id_.size(), 32u);
}

TEST_F(ServerTest, RequestIdIsReturnedOnErrorsToo) {
  Authorizer nobody;
  StartServer(ClientCertMode::kRequireAndVerify, &nobody);
  auto denied = CallEcho(TestPki::Get().Client("mtms"), "x", "req-denied");
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(last_response_request_id_, "req-denied");
}

TEST_F(ServerTest, LogsOneLinePerRpcWithoutBodies) {
  std::ostringstream captured;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(captured));
  logger->set_pattern("%v");
  spdlog::set_default_logger(logger);

  StartServer(ClientCertMode::kRequireAndVerify);
  ASSERT_TRUE(CallEcho(TestPki::Get().Client("mtms"), "SECRET-PAYLOAD-BYTES", "req-log-1").ok());
  server_->Shutdown(absl::Seconds(1));
  spdlog::set_default_logger(previous);

  std::string log = captured.str();
  EXPECT_THAT(log, AllOf(HasSubstr("rpc /rkl.v1.Echo/Echo request_id=req-log-1 caller=mtms "
                                   "code=OK latency_ms="),
                         Not(HasSubstr("SECRET-PAYLOAD-BYTES"))));
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n') >= 1, true);
  size_t lines_for_call = 0;
  for (size_t pos = 0; (pos = log.find("request_id=req-log-1", pos)) != std::string::npos; ++pos) {
    ++lines_for_call;
  }
  EXPECT_EQ(lines_for_call, 1u);
}

TEST_F(ServerTest, MessagesOverTheSizeLimitAreRefused) {
  auto echo = std::make_unique<EchoService>();
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls = TestPki::Get().Server();
  options.max_message_bytes = 1024;
  auto server = Server::Start(options, {echo.get()});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  echo_ = std::move(echo);

  EXPECT_TRUE(CallEcho(TestPki::Get().Client("mtms"), std::string(512, 'a')).ok());
  auto big = CallEcho(TestPki::Get().Client("mtms"), std::string(4096, 'a'));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
}

TEST_F(ServerTest, EchoRefusesPayloadsOverSixtyFourKiB) {
  StartServer(ClientCertMode::kRequireAndVerify);
  auto big = CallEcho(TestPki::Get().Client("mtms"), std::string(64 * 1024 + 1, 'a'));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument) << big.status();
}

TEST_F(ServerTest, StartFailsClearlyOnBadAddressOrMissingFiles) {
  EchoService echo;
  ServerOptions options;
  options.tls = TestPki::Get().Server();
  options.listen_address = "256.1.1.1:notaport";
  auto bad_address = Server::Start(options, {&echo});
  ASSERT_FALSE(bad_address.ok());
  EXPECT_THAT(bad_address.status().message(), HasSubstr("cannot listen on 256.1.1.1:notaport"));

  options.listen_address = "127.0.0.1:0";
  options.tls.key_file = "/nonexistent/kms.key";
  auto missing = Server::Start(options, {&echo});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("tls.key_file /nonexistent/kms.key"));
}

TEST_F(ServerTest, ShutdownSignalStopsTheServerGracefully) {
  StartServer(ClientCertMode::kRequireAndVerify);
  ASSERT_TRUE(CallEcho(TestPki::Get().Client("mtms")).ok());
  InstallShutdownSignalHandlers();  // before the signal can arrive
  // The handler latches the signal, so it may arrive before or after the wait begins.
  std::thread signaller([] { std::raise(SIGTERM); });
  EXPECT_EQ(server_->RunUntilShutdownSignal(absl::Seconds(2)), SIGTERM);
  signaller.join();
  EXPECT_FALSE(CallEcho(TestPki::Get().Client("mtms")).ok());
}

TEST_F(ServerTest, RequestShutdownWakesTheWaiter) {
  // Latched: the request may come before or after the wait begins.
  std::thread requester([] { RequestShutdown(); });
  EXPECT_EQ(WaitForShutdownSignal(), 0);
  requester.join();
}

// Counts the handler threads that ever served a call: a thread_local flag is fresh in
// every new thread, so a thread that exited and a new one are never confused.
class ThreadCountingEcho final : public rkl::v1::Echo::Service {
 public:
  grpc::Status Echo(grpc::ServerContext*, const rkl::v1::EchoRequest* request,
                    rkl::v1::EchoResponse* response) override {
    thread_local bool counted = false;
    if (!counted) {
      counted = true;
      threads_.fetch_add(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // calls overlap
    response->set_payload(request->payload());
    return grpc::Status::OK;
  }
  int threads() const { return threads_.load(); }

 private:
  std::atomic<int> threads_{0};
};

TEST_F(ServerTest, HandlerThreadsAreReusedUnderConcurrentLoad) {
  ThreadCountingEcho counting;
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls = TestPki::Get().Server();
  auto server = Server::Start(options, {&counting});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  auto stub = rkl::v1::Echo::NewStub(Channel(TestPki::Get().Client("mtms")));
  constexpr int kClients = 16, kCallsEach = 25;
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < kCallsEach; ++i) {
        auto ctx = MakeClientContext(kTimeout);
        rkl::v1::EchoRequest req;
        req.set_payload("x");
        rkl::v1::EchoResponse resp;
        if (!stub->Echo(ctx.get(), req, &resp).ok()) failed.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  // With gRPC's default (2 idle threads kept) this was one thread per call, ~400.
  EXPECT_LE(counting.threads(), 2 * kClients + 4);
  EXPECT_GE(counting.threads(), 1);
}

TEST(ServerOptionsTest, RejectsNoIdleThreads) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls = TestPki::Get().Server();
  options.max_idle_threads = 0;
  rkl::rpc::EchoService echo;
  EXPECT_EQ(Server::Start(options, {&echo}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::rpc
