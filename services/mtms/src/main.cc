// rkl-mtms: the factory side (docs/mtms.md). Start-up: configuration, logging, database
// migrations, peer channels, core, forwarder, then the gRPC server until SIGTERM.

#include <cstdlib>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "mtms_config.h"
#include "mtms_core.h"
#include "mtms_db_roles.h"
#include "mtms_forwarder.h"
#include "mtms_grpc_ports.h"
#include "mtms_grpc_service.h"
#include "mtms_metrics.h"
#include "mtms_operator_trust.h"
#include "mtms_pg_repository.h"
#include "rkl/audit/audit_metrics.h"
#include "rkl/audit/service_chain.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/pool_metrics.h"
#include "rkl/db/schema_roles.h"
#include "rkl/metrics/metrics.h"
#include "rkl/mtms/migrations.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/daemon.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/shutdown.h"
#include "spdlog/spdlog.h"

namespace {

std::shared_ptr<grpc::Channel> ChannelOrDie(const rkl::Config& config, const std::string& peer) {
  rkl::rpc::ChannelOptions options;
  options.tls = rkl::rpc::TlsFilesFromConfig(config);
  options.authority = config.GetString(peer + ".authority");
  const std::string target = config.GetString(peer + ".endpoint");
  options.round_robin = target.rfind("dns:", 0) == 0;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = rkl::rpc::MakeChannel(target, options);
  if (!channel.ok()) {
    spdlog::critical("{}: channel to {} failed: {}", rkl::mtms::kProgram, peer,
                     channel.status().ToString());
    std::exit(1);
  }
  return *channel;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rkl;
  using namespace rkl::mtms;
  ConfigSchema schema = MakeMtmsConfigSchema();
  const auto [config, migrate_only] = rpc::StartDaemonOrExit(schema, kProgram, argc, argv);
  spdlog::info("configuration:\n{}", config.Describe());
  // --migrate-only reads only db.* (nothing else is checked then).
  if (absl::Status s = migrate_only ? absl::OkStatus() : CheckMtmsConfig(config); !s.ok()) {
    spdlog::critical("{}: {}", kProgram, std::string(s.message()));
    return 1;
  }

  // Before everything that registers metrics in it, so it outlives them.
  metrics::Metrics process_metrics;
  db::ConnectionPool pool(db::PoolOptionsFromConfig(config));
  db::RegisterPoolMetrics(process_metrics, pool, "main");
  if (absl::Status s = db::SetUpDaemonSchema(pool, config, migrate_only, rkl::mtms::Migrations(),
                                             kMtmsRuntimeGrants);
      !s.ok()) {
    spdlog::critical("{}: {}", kProgram, s.ToString());
    return 1;
  }
  if (migrate_only) return 0;

  const absl::Duration timeout = config.GetDuration("rpc.timeout");
  GrpcHsmPort hsm_rpc(ChannelOrDie(config, "hsm"), timeout);
  // The forwarder's workers translate concurrently; their packages share HSM #1 calls.
  TranslateBatcher hsm(hsm_rpc, TranslateBatcherOptionsFromConfig(config));
  GrpcCaPort ca(ChannelOrDie(config, "ca"), timeout);
  GrpcKmsPort kms_rpc(ChannelOrDie(config, "kms"), timeout);
  // And their submissions share KMS calls.
  KmsSubmitBatcher kms(kms_rpc, KmsSubmitBatcherOptionsFromConfig(config));
  const Clock clock = SystemClock();
  absl::StatusOr<audit::AuditSettings> audit_settings = audit::AuditSettingsFromConfig(config);
  if (!audit_settings.ok()) {
    spdlog::critical("fatal: {}", audit_settings.status().ToString());
    return 1;
  }
  // The audit chain's MAC key: read, and checked against the KCV the chain was begun with.
  absl::StatusOr<crypto::SecretBytes> audit_key =
      audit::LoadAndBindAuditMacKey(pool, MtmsAuditChain(), *audit_settings);
  if (!audit_key.ok()) {
    spdlog::critical("fatal: {}", audit_key.status().ToString());
    return 1;
  }
  PgMtmsRepository repository(pool, *std::move(audit_key));
  // Anchors at start (checking the last run's), seals in the background; at the end of main
  // seals and anchors once more.
  audit::ServiceAuditChain audit_chain(repository.audit_log(), *audit_settings,
                                       ForwarderOptionsFromConfig(config).replica_id);
  audit_chain.Start();
  audit::RegisterAuditChainMetrics(process_metrics, pool, MtmsAuditChain(), "mtms", clock);
  RegisterMtmsMetrics(process_metrics, repository, clock);
  OperatorTrust trust(ca, clock, config.GetDuration("ca.crl_refresh"));
  if (absl::Status s = trust.Refresh(); !s.ok()) {
    // Not fatal: intake answers UNAVAILABLE until the CA is reachable.
    spdlog::warn("operator-ca not fetched at start-up: {}", s.ToString());
  }
  ForwarderOptions forwarder_options = ForwarderOptionsFromConfig(config);
  ForwarderMetrics forwarder_metrics(process_metrics);
  forwarder_options.metrics = &forwarder_metrics;
  if (forwarder_options.pk_index == 0 || forwarder_options.mak_index == 0) {
    spdlog::warn(
        "hsm.pk_index / hsm.mak_index not set: packages are stored but not forwarded "
        "until the key ceremony's indexes are configured");
  }
  Forwarder forwarder(repository, hsm, kms, trust, clock, forwarder_options);
  // Intake hands the packages it stores to the forwarder while its workers run.
  MtmsCoreOptions core_options = CoreOptionsFromConfig(config);
  core_options.hand_off = &forwarder;
  MtmsCore core(repository, hsm, ca, trust, clock, std::move(core_options));
  MtmsGrpcService service(core, forwarder, repository.audit_log(),
                          rpc::PublicCallLimitsFromConfig(config));

  // Client certificates on the service-ca CRL are refused (operator terminals present none).
  // A refresh pushed by `rklctl pki revoke --notify` also refreshes the operator-ca CRL, so
  // a revoked operator card is refused at once instead of after ca.crl_refresh.
  rpc::ServerOptions server_options{
      .listen_address = config.GetString("listen"),
      .tls = rpc::TlsFilesFromConfig(config),
      .client_cert_mode = rpc::ClientCertMode::kOptionalVerified,
      // RPCs are counted only where a scrape can read them.
      .metrics = config.GetString("metrics.listen").empty() ? nullptr : &process_metrics};
  rpc::ServiceCaCrlOptions crl_options =
      rpc::ServiceCaCrlOptionsFromConfig(config, server_options.tls);
  crl_options.also_refresh = [&trust] { return trust.Refresh(); };
  absl::StatusOr<std::unique_ptr<rpc::ServiceCaCrl>> crl =
      rpc::ServiceCaCrl::StartForServer(crl_options, server_options);
  if (!crl.ok()) {
    spdlog::critical("crl.*: {}", crl.status().ToString());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(server_options, {&service});
  if (!server.ok()) {
    spdlog::critical("gRPC server: {}", server.status().ToString());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<metrics::Endpoint>> metrics_endpoint =
      metrics::StartEndpoint(config, process_metrics);
  if (!metrics_endpoint.ok()) {
    spdlog::critical("{}", metrics_endpoint.status().ToString());
    return 1;
  }
  if (config.GetBool("forwarder.enabled")) forwarder.Start();
  spdlog::info("{} serving on port {} (replica {})", kProgram, (*server)->port(),
               forwarder_options.replica_id);
  // Housekeeping (docs/mtms.md "Bounded state"): the refusals counted in memory go to
  // refusal_counts every refusals.flush_interval (and at shutdown); counts older than
  // refusals.retention are deleted every refusals.purge_interval. One statement each, which
  // replicas may run at once.
  absl::Notification stop;
  std::thread housekeeping([&] {
    const absl::Duration flush_interval = config.GetDuration("refusals.flush_interval");
    const absl::Duration purge_interval = config.GetDuration("refusals.purge_interval");
    absl::Time last_purge = absl::Now();
    auto flush = [&] {
      if (absl::StatusOr<int64_t> flushed = core.FlushRefusalCounts(); !flushed.ok()) {
        spdlog::warn("mtms: refusal counts not written (kept for the next try): {}",
                     flushed.status().ToString());
      }
    };
    while (!stop.WaitForNotificationWithTimeout(flush_interval)) {
      flush();
      if (purge_interval <= absl::ZeroDuration() || absl::Now() - last_purge < purge_interval) {
        continue;
      }
      last_purge = absl::Now();
      if (absl::StatusOr<int64_t> purged = core.PurgeRefusalCounts(); !purged.ok()) {
        spdlog::warn("mtms: purge of refusal counts failed: {}", purged.status().ToString());
      }
    }
    flush();
  });
  (*server)->RunUntilShutdownSignal(absl::Seconds(10));
  stop.Notify();
  housekeeping.join();
  forwarder.Stop();
  spdlog::info("{} stopped", kProgram);
  return 0;
}
