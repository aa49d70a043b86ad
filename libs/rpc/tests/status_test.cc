#include "rkl/rpc/status.h"

#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "rkl/common/retry_delay.h"

namespace rkl::rpc {
namespace {

TEST(StatusConversion, EveryCodeRoundTripsWithItsMessage) {
  for (int c = 0; c <= 16; ++c) {
    auto code = static_cast<absl::StatusCode>(c);
    absl::Status original(code, code == absl::StatusCode::kOk ? "" : "field: rule");
    grpc::Status g = ToGrpcStatus(original);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    if (c != 0) {
      EXPECT_EQ(g.error_message(), "field: rule");
    }
    EXPECT_EQ(FromGrpcStatus(g), original) << c;

    grpc::Status from_grpc(static_cast<grpc::StatusCode>(c), c == 0 ? "" : "peer said no");
    absl::Status a = FromGrpcStatus(from_grpc);
    EXPECT_EQ(static_cast<int>(a.code()), c);
    grpc::Status back = ToGrpcStatus(a);
    EXPECT_EQ(back.error_code(), from_grpc.error_code());
    EXPECT_EQ(back.error_message(), from_grpc.error_message());
  }
}

TEST(StatusConversion, ARetryHintTravelsAsGoogleRpcRetryInfo) {
  absl::Status limited = RateLimitedError("rate limit: too many calls from this source",
                                          absl::Microseconds(1'500'001));
  EXPECT_EQ(limited.message(), "rate limit: too many calls from this source; retry in 1501 ms");
  grpc::Status g = ToGrpcStatus(limited);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), limited.message());
  // Standard details any gRPC client can read: google.rpc.Status{code, message, [RetryInfo]}.
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(g.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(details.details(0).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 1);
  EXPECT_EQ(retry.retry_delay().nanos(), 501'000'000);
  EXPECT_EQ(RetryDelayFromDetails(g), absl::Milliseconds(1501));
  absl::Status back = FromGrpcStatus(g);
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryDelay(back), absl::Milliseconds(1501));
  // Without a hint there are no details.
  EXPECT_TRUE(ToGrpcStatus(absl::ResourceExhaustedError("x")).error_details().empty());
  EXPECT_EQ(RetryDelay(FromGrpcStatus(ToGrpcStatus(absl::ResourceExhaustedError("x")))),
            std::nullopt);
}

TEST(StatusConversion, UnexpectedCodesBecomeUnknown) {
  grpc::Status odd(static_cast<grpc::StatusCode>(99), "from the future");
  EXPECT_EQ(FromGrpcStatus(odd).code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(99), "x")).error_code(),
            grpc::StatusCode::UNKNOWN);
}

// ---- The peer-error policy ------------------------------------------------------------------

TEST(PeerStatus, ALatePeerIsUnavailableSoTheSameCallMayBeRepeated) {
  EXPECT_EQ(
      FromPeerStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), "hsm"),
      absl::UnavailableError("hsm did not answer in time"));
}

TEST(PeerStatus, AnUnreachablePeerIsUnavailableAndNamed) {
  EXPECT_EQ(
      FromPeerStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"), "kms"),
      absl::UnavailableError("kms unavailable: connection refused"));
  // Its retry hint, if it sent one, is kept.
  absl::Status busy = FromPeerStatus(
      ToGrpcStatus(WithRetryDelay(absl::UnavailableError("busy"), absl::Seconds(2))), "ca");
  EXPECT_EQ(busy.message(), "ca unavailable: busy");
  EXPECT_EQ(RetryDelay(busy), absl::Seconds(2));
}

TEST(PeerStatus, EveryOtherAnswerIsThePeersOwnWithCodeMessageAndRetryHint) {
  for (int c = 0; c <= 16; ++c) {
    const auto code = static_cast<grpc::StatusCode>(c);
    if (code == grpc::StatusCode::DEADLINE_EXCEEDED || code == grpc::StatusCode::UNAVAILABLE) {
      continue;
    }
    grpc::Status answer(code, c == 0 ? "" : "field: rule");
    EXPECT_EQ(FromPeerStatus(answer, "hsm"), FromGrpcStatus(answer)) << c;
    EXPECT_EQ(FromPeerStatus(c, answer.error_message(), "hsm"), FromGrpcStatus(answer)) << c;
  }
  absl::Status limited = FromPeerStatus(
      ToGrpcStatus(WithRetryDelay(absl::ResourceExhaustedError("slow down"), absl::Seconds(3))),
      "kms");
  EXPECT_EQ(limited.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(limited.message(), "slow down");
  EXPECT_EQ(RetryDelay(limited), absl::Seconds(3));
}

TEST(PeerStatus, NumericCodesFollowTheSamePolicy) {
  EXPECT_EQ(
      FromPeerStatus(static_cast<int32_t>(grpc::StatusCode::DEADLINE_EXCEEDED), "late", "hsm"),
      absl::UnavailableError("hsm did not answer in time"));
  EXPECT_EQ(FromPeerStatus(static_cast<int32_t>(grpc::StatusCode::UNAUTHENTICATED),
                           "transport key rejected", "hsm"),
            absl::UnauthenticatedError("transport key rejected"));
}

TEST(PeerStatus, ACodeOutsideGoogleRpcCodeIsUnknownWithThePeersMessage) {
  EXPECT_EQ(FromPeerStatus(99, "from the future", "hsm"), absl::UnknownError("from the future"));
  EXPECT_EQ(FromPeerStatus(-1, "negative", "hsm"), absl::UnknownError("negative"));
  EXPECT_EQ(FromPeerStatus(17, "one past the last", "hsm"),
            absl::UnknownError("one past the last"));
  EXPECT_EQ(
      FromPeerStatus(grpc::Status(static_cast<grpc::StatusCode>(99), "from the future"), "hsm"),
      absl::UnknownError("from the future"));
}

}  // namespace
}  // namespace rkl::rpc
