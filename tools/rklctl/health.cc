// `rklctl health`: readiness probe over the standard gRPC health service, for the demo,
// the end-to-end tests and compose health checks. Exit 0 when SERVING.

#include "rkl/rpc/health.h"

#include <chrono>
#include <iostream>
#include <thread>

#include "commands.h"
#include "connection.h"

namespace rkl::rklctl {

void RegisterHealthCommands(CLI::App& app) {
  auto* cmd = app.add_subcommand("health", "check that a service reports SERVING (exit 0)");
  struct Options {
    Endpoint endpoint;
    std::string service;
    int wait_seconds = 0;
  };
  auto opts = std::make_shared<Options>();
  AddEndpointOptions(cmd, opts->endpoint, "target", "localhost:50051");
  cmd->add_option("--service", opts->service, "service name to check (default: the server)");
  cmd->add_option("--wait", opts->wait_seconds, "keep trying for this many seconds")
      ->check(CLI::Range(0, 3600));
  cmd->callback([opts] {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opts->wait_seconds);
    while (true) {
      // A fresh channel per attempt: a reused one would sit in gRPC's reconnect backoff
      // (up to tens of seconds) long after the server started listening.
      auto channel = Connect(opts->endpoint);
      if (!channel.ok()) {
        std::cerr << "rklctl health: " << channel.status().message() << "\n";
        throw CLI::RuntimeError(2);
      }
      auto serving = rpc::CheckHealth(*channel, opts->service, absl::Seconds(3));
      if (serving.ok() && *serving) {
        std::cout << opts->endpoint.target << ": SERVING\n";
        return;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        std::cerr << opts->endpoint.target << ": "
                  << (serving.ok() ? std::string("NOT_SERVING")
                                   : std::string(serving.status().message()))
                  << "\n";
        throw CLI::RuntimeError(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  });
}

}  // namespace rkl::rklctl
