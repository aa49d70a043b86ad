#pragma once
// Connection flags shared by every rklctl area: where the service is and which TLS files to
// use. Admin commands present an admin:* client certificate (mTLS).

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"

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

// Adds the subcommand `name` of `parent` for a service at --<flag>: its options live in a
// shared `Options` (which has an `Endpoint endpoint` member) for the callback to capture, and
// the endpoint options are added.
template <typename Options>
std::pair<CLI::App*, std::shared_ptr<Options>> AddServiceCommand(
    CLI::App* parent, const std::string& name, const std::string& help, const std::string& flag,
    const std::string& default_target) {
  auto options = std::make_shared<Options>();
  CLI::App* command = parent->add_subcommand(name, help);
  AddEndpointOptions(command, options->endpoint, flag, default_target);
  return {command, options};
}

// Adds the command group `name` (one subcommand of it required) and calls each of
// `add_commands` on it to add its subcommands.
CLI::App* AddCommandGroup(CLI::App& parent, const std::string& name, const std::string& help,
                          std::initializer_list<void (*)(CLI::App*)> add_commands = {});

// One area of commands (pki, hsm, mtms, kms): how its failures read, and the deadline of its
// calls.
struct Area {
  std::string_view name;  // "kms": errors read `rklctl kms <step>: <CODE>: <message>`
  absl::Duration timeout;

  // Prints the failure to stderr and ends the command with exit status `exit_code`.
  [[noreturn]] void Fail(const std::string& step, const absl::Status& status,
                         int exit_code = 1) const;

  // One unary call with this area's deadline; a failed call is Fail(step, ...).
  template <typename Stub, typename Req, typename Resp>
  Resp Call(const std::string& step, Stub& stub,
            grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
            const std::type_identity_t<Req>& request) const {
    std::unique_ptr<grpc::ClientContext> ctx = rpc::MakeClientContext(timeout);
    Resp response;
    grpc::Status status = (stub.*method)(ctx.get(), request, &response);
    if (!status.ok()) Fail(step, rpc::FromGrpcStatus(status));
    return response;
  }
};

}  // namespace rkl::rklctl
