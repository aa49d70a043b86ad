#pragma once
// A client channel to a service a test started on this machine.

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "rkl/rpc/tls.h"

namespace rkl::testing {

// A channel to 127.0.0.1:`port` presenting `tls`, expecting the server certificate to name
// `authority`. A channel that cannot be made is a test failure (and null).
std::shared_ptr<grpc::Channel> LoopbackChannel(int port, const rpc::TlsFiles& tls,
                                               const std::string& authority);

}  // namespace rkl::testing
