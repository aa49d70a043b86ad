#pragma once
// Client channels to rkl services, always over TLS.
//
// Inter-service channels present a client certificate (mTLS); the terminal simulator's
// channel to KMS presents none (server-authenticated TLS). The server certificate must
// chain to tls.ca_file and name `authority` (or the target host) in its SANs.
// Channels are thread-safe and meant to be created once per peer and shared.

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/tls.h"

namespace rkl::rpc {

struct ChannelOptions {
  TlsFiles tls;  // cert_file/key_file: both for mTLS, both empty for server-auth only
  // The name the server certificate must carry, when it differs from the target's host
  // (e.g. target "10.0.0.5:50055", authority "kms"). Empty: the target's host.
  std::string authority;
  // Spread calls over every address a `dns:///` target resolves to (scaled-out replicas).
  bool round_robin = false;
  int max_message_bytes = kDefaultMaxMessageBytes;
  // HTTP/2 keepalive while calls are active, to notice dead peers behind NAT/proxies.
  // Zero disables.
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
};

// `target` is a gRPC target: "host:port", "dns:///kms:50055", ... The channel connects
// lazily; TLS file errors are reported now, naming the file.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options);

}  // namespace rkl::rpc
