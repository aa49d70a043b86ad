#include "rkl/rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "call_logging.h"
#include "rkl/common/status_macros.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/shutdown.h"
#include "spdlog/spdlog.h"

namespace rkl::rpc {
namespace {

void InitProcessWidePlugins() {
  // Both are process-global switches read by every later ServerBuilder.
  static std::once_flag once;
  std::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options,
                                                      const std::vector<grpc::Service*>& services) {
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes must be positive");
  }
  if (options.max_idle_threads < 1) {
    return absl::InvalidArgumentError("max_idle_threads must be at least 1");
  }
  RKL_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds,
                       MakeServerCredentials(options.tls, options.client_cert_mode));
  std::unique_ptr<grpc::Service> revocation_service;
  if (options.revocation != nullptr) {
    if (!options.refresh_crl) {
      return absl::InvalidArgumentError("refresh_crl: required with revocation");
    }
    creds->SetAuthMetadataProcessor(options.revocation->MakeProcessor());
    revocation_service = MakeRevocationService(options.refresh_crl, options.revocation);
  }
  InitProcessWidePlugins();

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address, creds, &port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  if (revocation_service) builder.RegisterService(revocation_service.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Clients (MakeChannel) send keepalive pings every 30 s; without this the server would
  // treat them as abuse and close idle connections with GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // A thread that finished a call goes back to waiting for calls ("polling") unless
  // MAX_POLLERS are already waiting, in which case it exits.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                              options.max_idle_threads);

  std::unique_ptr<internal::RpcMetrics> rpc_metrics;
  if (options.metrics != nullptr) {
    rpc_metrics = std::make_unique<internal::RpcMetrics>(*options.metrics);
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(
      std::make_unique<internal::CallLoggingInterceptorFactory>(rpc_metrics.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));

  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use, or not a valid host:port?)"));
  }
  auto result = std::unique_ptr<Server>(
      new Server(std::move(revocation_service), std::move(rpc_metrics), std::move(server), port));
  result->SetServing("", options.start_serving);
  spdlog::info("gRPC server listening on {} (port {}, client certificates {}{})",
               options.listen_address, port,
               options.client_cert_mode == ClientCertMode::kRequireAndVerify ? "required"
               : options.client_cert_mode == ClientCertMode::kOptionalVerified
                   ? "optional, verified"
                   : "not requested",
               options.revocation != nullptr ? ", checked against the service-ca CRL" : "");
  return result;
}

Server::Server(std::unique_ptr<grpc::Service> revocation_service,
               std::unique_ptr<internal::RpcMetrics> rpc_metrics,
               std::unique_ptr<grpc::Server> server, int port)
    : revocation_service_(std::move(revocation_service)),
      rpc_metrics_(std::move(rpc_metrics)),
      server_(std::move(server)),
      port_(port) {}

Server::~Server() { Shutdown(absl::ZeroDuration()); }

void Server::SetServing(bool serving) {
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(serving);
}

void Server::SetServing(const std::string& service, bool serving) {
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(service, serving);
  }
}

void Server::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  // Load balancers and health probes see NOT_SERVING first and stop sending new calls.
  SetServing(false);
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));  // wall time: the grace wait
  server_->Wait();
}

void Server::Wait() { server_->Wait(); }

int Server::RunUntilShutdownSignal(absl::Duration grace) {
  int sig = WaitForShutdownSignal();
  spdlog::info("shutting down (signal {}), grace period {}", sig, absl::FormatDuration(grace));
  Shutdown(grace);
  spdlog::info("shut down");
  return sig;
}

}  // namespace rkl::rpc
