// BeginAuthentication calls that wait at KMS for a terminal's transport key (wait_ms), made
// as a terminal makes them (no client certificate); tk_wait.sh runs each test on its own,
// around the events it waits for:
//
//  TkWait.BeginWaitsForTheTransportKey   one call for E2E_WAIT_SN, whose package has not been
//                                        submitted yet, with a long wait: it must return OK
//                                        (a challenge), however long MTMS took to forward
//  TkWait.AWaitForAnSnThatNeverArrivesEndsNotFound
//                                        a short wait for E2E_NEVER_SN, which never arrives:
//                                        NOT_FOUND
//
// Environment: E2E_PKI, E2E_KMS_ADDR, E2E_WAIT_SN, E2E_NEVER_SN.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <string>

#include "e2e_support.h"
#include "rkl/crypto/random.h"
#include "rkl/rpc/call_context.h"
#include "rkl/v1/kms.grpc.pb.h"

namespace rkl::e2e {
namespace {

std::unique_ptr<v1::Kms::Stub> KmsAsTerminal() {
  auto channel = rpc::MakeChannel(ServiceAddress("kms"), ChannelOptionsAs("kms", Who::kNone));
  EXPECT_TRUE(channel.ok()) << channel.status();
  return v1::Kms::NewStub(*channel);
}

// BeginAuthentication for `sn` as an AES terminal sends it, asking KMS to wait up to
// `wait` for the TK, with a deadline 30 s beyond.
grpc::Status Begin(const std::string& sn, absl::Duration wait,
                   v1::BeginAuthenticationResponse* challenge) {
  Bytes rnd1(16);
  crypto::FillRandom(rnd1);
  v1::BeginAuthenticationRequest req;
  req.set_sn(sn);
  req.set_rnd1(std::string(rnd1.begin(), rnd1.end()));
  req.set_wait_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(wait)));
  auto ctx = rpc::MakeClientContext(wait + absl::Seconds(30));
  return KmsAsTerminal()->BeginAuthentication(ctx.get(), req, challenge);
}

TEST(TkWait, BeginWaitsForTheTransportKey) {
  v1::BeginAuthenticationResponse challenge;
  grpc::Status s = Begin(Env("E2E_WAIT_SN"), absl::Minutes(10), &challenge);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_FALSE(challenge.session_id().empty());
  EXPECT_FALSE(challenge.crnd1().empty());
  EXPECT_EQ(challenge.rnd2().size(), 16u);  // one AES block
}

TEST(TkWait, AWaitForAnSnThatNeverArrivesEndsNotFound) {
  v1::BeginAuthenticationResponse challenge;
  grpc::Status s = Begin(Env("E2E_NEVER_SN"), absl::Milliseconds(300), &challenge);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

}  // namespace
}  // namespace rkl::e2e
