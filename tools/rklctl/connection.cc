#include "connection.h"

#include <iostream>

#include "rkl/rpc/channel.h"

namespace rkl::rklctl {

void AddEndpointOptions(CLI::App* cmd, Endpoint& endpoint, const std::string& flag,
                        const std::string& default_target) {
  endpoint.target = default_target;
  cmd->add_option("--" + flag, endpoint.target, "service address (host:port)")
      ->capture_default_str();
  cmd->add_option("--tls-ca", endpoint.tls_ca, "CA bundle the server must chain to")
      ->envname("RKL_CTL_TLS_CA");
  cmd->add_option("--tls-cert", endpoint.tls_cert, "client (admin) certificate, PEM")
      ->envname("RKL_CTL_TLS_CERT");
  cmd->add_option("--tls-key", endpoint.tls_key, "client (admin) private key, PEM")
      ->envname("RKL_CTL_TLS_KEY");
  cmd->add_option("--authority", endpoint.authority,
                  "server name to expect in its certificate, when not the target host");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const Endpoint& endpoint) {
  rpc::ChannelOptions options;
  options.tls = {endpoint.tls_cert, endpoint.tls_key, endpoint.tls_ca};
  options.authority = endpoint.authority;
  return rpc::MakeChannel(endpoint.target, options);
}

CLI::App* AddCommandGroup(CLI::App& parent, const std::string& name, const std::string& help,
                          std::initializer_list<void (*)(CLI::App*)> add_commands) {
  CLI::App* group = parent.add_subcommand(name, help);
  group->require_subcommand(1);
  for (auto add : add_commands) add(group);
  return group;
}

void Area::Fail(const std::string& step, const absl::Status& status, int exit_code) const {
  std::cerr << "rklctl " << name << " " << step << ": " << absl::StatusCodeToString(status.code())
            << ": " << status.message() << "\n";
  throw CLI::RuntimeError(exit_code);
}

}  // namespace rkl::rklctl
