#pragma once
// Connection flags shared by every rklctl area: where the service is and which TLS files to
// use. Admin commands present an admin:* client certificate (mTLS).

#include <grpcpp/channel.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace rkl::rklctl {

struct Endpoint {
  std::string target;    // host:port or dns:///name:port
  std::string tls_ca;    // CA bundle that the server certificate must chain to
  std::string tls_cert;  // client certificate (admin); empty for server-auth only
  std::string tls_key;
  std::string authority;  // expected server name when it differs from the target host
};

// Adds --<flag> (target), --tls-ca, --tls-cert, --tls-key and --authority to `cmd`, each
// also read from RKL_CTL_TLS_CA / RKL_CTL_TLS_CERT / RKL_CTL_TLS_KEY when not given.
void AddEndpointOptions(CLI::App* cmd, Endpoint& endpoint, const std::string& flag,
                        const std::string& default_target);

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const Endpoint& endpoint);

}  // namespace rkl::rklctl
