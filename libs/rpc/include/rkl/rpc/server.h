#pragma once
// Bootstrap for every rkl gRPC server: TLS from files, the standard health service,
// server reflection, one log line per RPC, a message size limit, and graceful shutdown.
//
// Guarantees:
//  - Transport is always TLS. kRequireAndVerify (default) rejects, during the handshake,
//    any client without a certificate chaining to tls.ca_file; kNone is for the
//    terminal-facing endpoint only. With `revocation` set, every call whose client presented
//    a certificate is also checked against the service-ca CRL in force (rkl/rpc/revocation.h)
//    and refused with UNAUTHENTICATED if it is revoked or its status is unknown — per call,
//    so a revocation also stops connections opened before it. Authorization per RPC stays the
//    handler's job (rkl/rpc/identity.h) — the transport only establishes who is calling.
//  - Each RPC is logged once: request id, method, caller identity, status code, latency.
//    Request and response bodies are never logged. With ServerOptions::metrics, each RPC is
//    also counted in rkl_rpc_requests_total{method,code} and its latency observed in
//    rkl_rpc_duration_seconds{method}.
//  - Services passed to Start() are not owned and must outlive the Server.
//  - SetServing/Shutdown/Wait are thread-safe; Shutdown is idempotent, and the destructor
//    shuts down immediately if nobody did it gracefully.
//
// A daemon's main(), in outline:
//   rkl::ConfigSchema schema("RKL_HSM");
//   schema.String("listen", "host:port to serve on").Default("0.0.0.0:50052");
//   rkl::rpc::DeclareTlsConfig(schema);  // tls.cert_file, tls.key_file, tls.ca_file
//   schema.Enum("log.format", {"text", "json"}, "...").Default("text");
//   rkl::Config config = rkl::LoadConfigOrExit(schema, "rkl-hsm", argc, argv);
//   rkl::InitLogging({.format = *rkl::ParseLogFormat(config.GetEnum("log.format")),
//                     .program = "rkl-hsm"});
//   rkl::rpc::InstallShutdownSignalHandlers();
//   HsmGrpcService service(...);
//   auto server = rkl::rpc::Server::Start({.listen_address = config.GetString("listen"),
//                                          .tls = rkl::rpc::TlsFilesFromConfig(config)},
//                                         {&service});
//   if (!server.ok()) { spdlog::critical("{}", server.status().ToString()); return 1; }
//   (*server)->RunUntilShutdownSignal(absl::Seconds(10));

#include <grpcpp/impl/codegen/service_type.h>
#include <grpcpp/server.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rkl/rpc/tls.h"

namespace rkl::metrics {
class Metrics;
}  // namespace rkl::metrics

namespace rkl::rpc {

class RevocationList;
namespace internal {
struct RpcMetrics;
}  // namespace internal

inline constexpr int kDefaultMaxMessageBytes = 1 << 20;  // 1 MiB: rkl messages are small

struct ServerOptions {
  // host:port; port 0 picks a free port (tests), see Server::port().
  std::string listen_address = "0.0.0.0:0";
  TlsFiles tls;
  ClientCertMode client_cert_mode = ClientCertMode::kRequireAndVerify;
  int max_message_bytes = kDefaultMaxMessageBytes;  // both directions
  // Whether overall health ("") starts SERVING. A daemon that must first reach its
  // database can start with false and call SetServing(true) when ready.
  bool start_serving = true;
  // Handler threads kept waiting for the next call. gRPC's synchronous server otherwise
  // keeps at most 2: under concurrent calls each finished handler thread then exits and
  // each new call creates one, so the process spends its time in the kernel creating and
  // ending threads instead of reusing them. Threads are still created only as concurrency
  // demands.
  int max_idle_threads = 256;
  // Client-certificate revocation (see above; ServiceCaCrl::ConfigureServer sets both). The
  // server then also serves rkl.v1.Revocation, whose RefreshCrl (admins only) runs
  // `refresh_crl`. Not owned; must outlive the server.
  const RevocationList* revocation = nullptr;
  std::function<absl::StatusOr<uint64_t>()> refresh_crl{};
  // The process's metrics, where every RPC is counted (see above); null: none. Not owned;
  // must outlive the server.
  metrics::Metrics* metrics = nullptr;
};

class Server {
 public:
  // Builds and starts the server. Errors name the TLS file or the address at fault.
  // Reflection is enabled process-wide: it only describes public protos.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       const std::vector<grpc::Service*>& services);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // The bound port (the real one when listen_address asked for port 0).
  int port() const { return port_; }

  // Health status reported by grpc.health.v1.Health. `service` is a fully qualified
  // service name ("rkl.v1.Kms"); "" is the overall status. SetServing(bool) sets the
  // overall status and every service named so far.
  void SetServing(bool serving);
  void SetServing(const std::string& service, bool serving);

  // Reports NOT_SERVING, stops accepting calls, lets in-flight calls finish for up to
  // `grace`, then cancels the rest and waits for handlers to return.
  void Shutdown(absl::Duration grace);
  // Blocks until the server has shut down.
  void Wait();

  // main()'s last line: blocks until SIGTERM/SIGINT (or RequestShutdown()), logs it, then
  // Shutdown(grace). Returns the signal number (0 for RequestShutdown()).
  int RunUntilShutdownSignal(absl::Duration grace);

  grpc::Server& grpc_server() { return *server_; }

 private:
  Server(std::unique_ptr<grpc::Service> revocation_service,
         std::unique_ptr<internal::RpcMetrics> rpc_metrics, std::unique_ptr<grpc::Server> server,
         int port);

  // Declared before server_, so they outlive the server that uses them.
  std::unique_ptr<grpc::Service> revocation_service_;
  std::unique_ptr<internal::RpcMetrics> rpc_metrics_;
  std::unique_ptr<grpc::Server> server_;
  const int port_;
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace rkl::rpc
