#include "rkl/rpc/status.h"

#include <gtest/gtest.h>

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

TEST(StatusConversion, UnexpectedCodesBecomeUnknown) {
  grpc::Status odd(static_cast<grpc::StatusCode>(99), "from the future");
  EXPECT_EQ(FromGrpcStatus(odd).code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(99), "x")).error_code(),
            grpc::StatusCode::UNKNOWN);
}

}  // namespace
}  // namespace rkl::rpc
