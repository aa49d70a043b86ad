// One request id across hops: a handler runs under its call's id, and the calls it makes send
// that id on (rkl/common/request_id.h, rkl/rpc/call_context.h).
#include "rkl/common/request_id.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "rkl/common/logging.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/echo_service.h"
#include "rkl/rpc/peer_client.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/unary_service.h"
#include "rkl/v1/echo.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "test_pki.h"

namespace rkl::rpc {
namespace {

using ::testing::HasSubstr;
using testing::TestPki;

constexpr absl::Duration kTimeout = absl::Seconds(10);

// What one hop saw of its call: the id in the call's metadata and the thread's current id.
struct Seen {
  std::string metadata_id;
  std::string current_id;
};

// Echo that records what it saw and, given a `next` hop, calls it (PeerClient, no explicit id)
// before answering; the answer's payload is the next hop's.
class Hop final : public UnaryService {
 public:
  Hop(DispatchOptions dispatch, const PeerClient<v1::Echo>* next)
      : UnaryService(PublicEchoDescriptor(), {}, dispatch), next_(next) {
    Bind("Echo",
         [this](const UnaryCall& call, const v1::EchoRequest* req,
                v1::EchoResponse* resp) -> absl::Status {
           spdlog::info("hop served {}", next_ == nullptr ? "last" : "first");
           {
             absl::MutexLock lock(&mu_);
             seen_.push_back({RequestId(call.ctx), std::string(CurrentRequestId())});
           }
           if (next_ == nullptr) {
             resp->set_payload(req->payload());
             return absl::OkStatus();
           }
           absl::StatusOr<v1::EchoResponse> answer = next_->Call(&v1::Echo::Stub::Echo, *req);
           if (!answer.ok()) return answer.status();
           *resp = *std::move(answer);
           return absl::OkStatus();
         });
  }
  std::vector<Seen> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  const PeerClient<v1::Echo>* const next_;
  absl::Mutex mu_;
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

std::shared_ptr<grpc::Channel> ChannelTo(const Server& server) {
  ChannelOptions options;
  options.tls = TestPki::Get().Client("mtms");
  options.authority = "localhost";
  auto channel = MakeChannel("127.0.0.1:" + std::to_string(server.port()), options);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return *channel;
}

// Two servers: the client calls `first`, whose handler calls `last`; both hops serve with the
// parameter's dispatch (the id is the thread's current one on whichever thread runs a body).
class TwoHops : public ::testing::TestWithParam<Dispatch> {
 protected:
  void SetUp() override {
    const DispatchOptions dispatch{.dispatch = GetParam(), .pool_threads = 2};
    last_ = std::make_unique<Hop>(dispatch, nullptr);
    last_server_ = Start(*last_);
    to_last_.emplace(ChannelTo(*last_server_), kTimeout, "last");
    first_ = std::make_unique<Hop>(dispatch, &*to_last_);
    first_server_ = Start(*first_);
  }

  static std::unique_ptr<Server> Start(Hop& hop) {
    auto server = Server::Start({.listen_address = "127.0.0.1:0",
                                 .tls = TestPki::Get().Server(),
                                 .client_cert_mode = ClientCertMode::kOptionalVerified},
                                {&hop});
    EXPECT_TRUE(server.ok()) << server.status();
    return *std::move(server);
  }

  // Calls `first` with `ctx`; the id the server answered with.
  std::string CallFirst(grpc::ClientContext& ctx) {
    auto stub = v1::Echo::NewStub(ChannelTo(*first_server_));
    v1::EchoRequest req;
    req.set_payload("ping");
    v1::EchoResponse resp;
    grpc::Status status = stub->Echo(&ctx, req, &resp);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(resp.payload(), "ping");
    return ResponseRequestId(ctx);
  }

  std::unique_ptr<Hop> last_;
  std::unique_ptr<Server> last_server_;
  std::optional<PeerClient<v1::Echo>> to_last_;
  std::unique_ptr<Hop> first_;
  std::unique_ptr<Server> first_server_;
};

TEST_P(TwoHops, TheCallersIdReachesTheNextHopAndIsCurrentInBothHandlers) {
  auto ctx = MakeClientContext(kTimeout, "flow-1.terminal_A:x");
  EXPECT_EQ(CallFirst(*ctx), "flow-1.terminal_A:x");
  ASSERT_EQ(first_->seen().size(), 1u);
  ASSERT_EQ(last_->seen().size(), 1u);
  for (const Seen& s : {first_->seen()[0], last_->seen()[0]}) {
    EXPECT_EQ(s.metadata_id, "flow-1.terminal_A:x");
    EXPECT_EQ(s.current_id, "flow-1.terminal_A:x");
  }
}

TEST_P(TwoHops, AMalformedIdIsReplacedAndTheReplacementTravelsOn) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + kTimeout));
  ctx->AddMetadata(kRequestIdMetadataKey, "bad id; rm -rf");
  const std::string answered = CallFirst(*ctx);
  EXPECT_TRUE(IsWellFormedRequestId(answered)) << answered;
  EXPECT_NE(answered, "bad id; rm -rf");
  ASSERT_EQ(first_->seen().size(), 1u);
  ASSERT_EQ(last_->seen().size(), 1u);
  EXPECT_EQ(first_->seen()[0].current_id, answered);
  EXPECT_EQ(last_->seen()[0].metadata_id, answered);
  EXPECT_EQ(last_->seen()[0].current_id, answered);
}

TEST_P(TwoHops, EachCallWithoutAnIdGetsItsOwn) {
  auto a = MakeClientContext(kTimeout);
  auto b = MakeClientContext(kTimeout);
  const std::string id_a = CallFirst(*a);
  const std::string id_b = CallFirst(*b);
  EXPECT_NE(id_a, id_b);
  ASSERT_EQ(last_->seen().size(), 2u);
  EXPECT_EQ(last_->seen()[0].metadata_id, id_a);
  EXPECT_EQ(last_->seen()[1].metadata_id, id_b);
}

TEST_P(TwoHops, TheHandlersLogLinesCarryTheId) {
  InitLogging({.format = LogFormat::kText, .program = "rpc-test"});
  ::testing::internal::CaptureStderr();
  auto ctx = MakeClientContext(kTimeout, "flow-logged");
  CallFirst(*ctx);
  spdlog::default_logger()->flush();
  const std::string out = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(out, HasSubstr("hop served first request_id=flow-logged\n"));
  EXPECT_THAT(out, HasSubstr("hop served last request_id=flow-logged\n"));
}

TEST_P(TwoHops, AClientSendsItsThreadsCurrentIdUnlessGivenOne) {
  v1::EchoRequest req;
  {
    const ScopedRequestId flow("flow-7");
    ASSERT_TRUE(to_last_->Call(&v1::Echo::Stub::Echo, req).ok());
    auto explicit_id = MakeClientContext(kTimeout, "given-8");
    auto stub = v1::Echo::NewStub(ChannelTo(*last_server_));
    v1::EchoResponse resp;
    ASSERT_TRUE(stub->Echo(explicit_id.get(), req, &resp).ok());
  }
  ASSERT_TRUE(to_last_->Call(&v1::Echo::Stub::Echo, req).ok());  // no flow: a fresh id
  const std::vector<Seen> seen = last_->seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].metadata_id, "flow-7");
  EXPECT_EQ(seen[1].metadata_id, "given-8");
  EXPECT_TRUE(IsWellFormedRequestId(seen[2].metadata_id));
  EXPECT_NE(seen[2].metadata_id, "flow-7");
  EXPECT_EQ(CurrentRequestId(), "");
}

INSTANTIATE_TEST_SUITE_P(Dispatch, TwoHops, testing::AllDispatches(), testing::DispatchTestName);

}  // namespace
}  // namespace rkl::rpc
