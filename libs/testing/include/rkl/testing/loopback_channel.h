#pragma once
// A gRPC channel to a test server on this host, over mTLS with the TestPki's certificates.

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "rkl/rpc/channel.h"

namespace rkl::testing {

// A channel to 127.0.0.1:`port` presenting `tls` and expecting the server's certificate to
// name `authority`; null, and a test failure, when it cannot be made.
inline std::shared_ptr<grpc::Channel> LoopbackChannel(int port, const rpc::TlsFiles& tls,
                                                      const std::string& authority) {
  rpc::ChannelOptions options;
  options.tls = tls;
  options.authority = authority;
  auto channel = rpc::MakeChannel(absl::StrCat("127.0.0.1:", port), options);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return channel.ok() ? *channel : nullptr;
}

}  // namespace rkl::testing
