// rkl::rpc::Server counts every RPC in the process's metrics (rkl/rpc/server.h).

#include <gtest/gtest.h>

#include "rkl/metrics/metrics.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/echo_service.h"
#include "rkl/rpc/server.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using testing::TestPki;

constexpr char kEcho[] = "/rkl.v1.Echo/Echo";

class RpcMetricsTest : public ::testing::Test {
 protected:
  void Start(const Authorizer* authorizer, metrics::Metrics* metrics) {
    echo_ = std::make_unique<EchoService>(authorizer);
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.tls = TestPki::Get().Server();
    options.metrics = metrics;
    auto server = Server::Start(options, {echo_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ChannelOptions channel_options;
    channel_options.tls = TestPki::Get().Client("mtms");
    channel_options.authority = "localhost";
    auto channel = MakeChannel("127.0.0.1:" + std::to_string(server_->port()), channel_options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    stub_ = rkl::v1::Echo::NewStub(*channel);
  }

  grpc::StatusCode Call() {
    auto ctx = MakeClientContext(absl::Seconds(10));
    rkl::v1::EchoRequest req;
    req.set_payload("SECRET-PAYLOAD");
    rkl::v1::EchoResponse resp;
    return stub_->Echo(ctx.get(), req, &resp).error_code();
  }

  std::unique_ptr<EchoService> echo_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<rkl::v1::Echo::Stub> stub_;
};

TEST_F(RpcMetricsTest, EveryRpcIsCountedByMethodAndCodeWithItsLatency) {
  metrics::Metrics metrics;
  Authorizer only_kms;
  only_kms.Allow("Echo", {"kms"});
  Start(&only_kms, &metrics);
  // The status reaches the client after the interceptor counted it: no waiting needed.
  ASSERT_EQ(Call(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_EQ(Call(), grpc::StatusCode::PERMISSION_DENIED);

  auto families = metrics.Collect();
  EXPECT_EQ(metrics::SampleValue(families, "rkl_rpc_requests_total",
                                 {{"method", kEcho}, {"code", "PERMISSION_DENIED"}}),
            2);
  EXPECT_EQ(
      metrics::SampleValue(families, "rkl_rpc_requests_total", {{"method", kEcho}, {"code", "OK"}}),
      std::nullopt);
  EXPECT_EQ(metrics::SampleValue(families, "rkl_rpc_duration_seconds", {{"method", kEcho}}), 2);
  // Nothing of the request in any label or value.
  EXPECT_EQ(metrics.Render().find("SECRET-PAYLOAD"), std::string::npos);
  EXPECT_EQ(metrics.Render().find("mtms"), std::string::npos);  // no caller identities either
}

TEST_F(RpcMetricsTest, SuccessfulCallsAreCountedApart) {
  metrics::Metrics metrics;
  Start(nullptr, &metrics);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Call(), grpc::StatusCode::OK);
  auto families = metrics.Collect();
  EXPECT_EQ(
      metrics::SampleValue(families, "rkl_rpc_requests_total", {{"method", kEcho}, {"code", "OK"}}),
      3);
  EXPECT_EQ(metrics::SampleValue(families, "rkl_rpc_duration_seconds", {{"method", kEcho}}), 3);
}

TEST_F(RpcMetricsTest, AServerWithoutMetricsServesAsBefore) {
  Start(nullptr, nullptr);
  EXPECT_EQ(Call(), grpc::StatusCode::OK);
}

}  // namespace
}  // namespace rkl::rpc
