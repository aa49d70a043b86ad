#include "rkl/testing/loopback_channel.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "rkl/rpc/channel.h"

namespace rkl::testing {

std::shared_ptr<grpc::Channel> LoopbackChannel(int port, const rpc::TlsFiles& tls,
                                               const std::string& authority) {
  auto channel =
      rpc::MakeChannel(absl::StrCat("127.0.0.1:", port), {.tls = tls, .authority = authority});
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *channel : nullptr;
}

}  // namespace rkl::testing
