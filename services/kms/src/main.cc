// rkl-kms: the key-management daemon (docs/kms.md). Start-up: configuration (file and
// RKL_KMS_* environment), logging, database migrations, HSM #2 channel, gRPC server.
// Health is NOT_SERVING until the database and HSM #2 answer, and follows them afterwards.

#include <atomic>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "grpc_hsm_port.h"
#include "kms_config.h"
#include "kms_core.h"
#include "kms_db_roles.h"
#include "kms_grpc_service.h"
#include "kms_metrics.h"
#include "kms_pg_metrics.h"
#include "kms_pg_repository.h"
#include "rkl/audit/audit_metrics.h"
#include "rkl/audit/service_chain.h"
#include "rkl/crypto/random.h"
#include "rkl/db/listener.h"
#include "rkl/db/pool_metrics.h"
#include "rkl/db/schema_roles.h"
#include "rkl/db/transaction.h"
#include "rkl/kms/migrations.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/daemon.h"
#include "rkl/rpc/health.h"
#include "rkl/rpc/shutdown.h"
#include "spdlog/spdlog.h"
#include "tk_waiters.h"

namespace {

constexpr char kProgram[] = "rkl-kms";
constexpr absl::Duration kReadinessInterval = absl::Seconds(5);

bool DatabaseReady(rkl::db::ConnectionPool& pool) {
  absl::Status s = rkl::db::RunInReadOnlyTransaction(pool, [](pqxx::work& tx) {
    tx.exec("SELECT 1");
    return absl::OkStatus();
  });
  if (!s.ok()) spdlog::warn("kms: database not ready: {}", s.ToString());
  return s.ok();
}

bool HsmReady(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  absl::StatusOr<bool> serving = rkl::rpc::CheckHealth(channel, "", timeout);
  if (!serving.ok()) spdlog::warn("kms: HSM #2 not reachable: {}", serving.status().ToString());
  return serving.ok() && *serving;
}

}  // namespace

int main(int argc, char** argv) {
  rkl::ConfigSchema schema = rkl::kms::MakeKmsConfigSchema();
  const auto [config, migrate_only] = rkl::rpc::StartDaemonOrExit(schema, kProgram, argc, argv);
  spdlog::info("configuration:\n{}", config.Describe());

  // Only db.* is read before this step: --migrate-only checks nothing else.
  // Before everything that registers metrics in it, so it outlives them.
  rkl::metrics::Metrics process_metrics;
  rkl::db::ConnectionPool pool(rkl::db::PoolOptionsFromConfig(config));
  rkl::db::RegisterPoolMetrics(process_metrics, pool, "main");
  if (absl::Status s = rkl::db::SetUpDaemonSchema(
          pool, config, migrate_only, rkl::kms::Migrations(), rkl::kms::kKmsRuntimeGrants);
      !s.ok()) {
    spdlog::critical("fatal: {}", s.ToString());
    return 1;
  }
  if (migrate_only) return 0;
  absl::StatusOr<rkl::kms::KmsSettings> loaded = rkl::kms::KmsSettingsFromConfig(config);
  if (!loaded.ok()) {
    spdlog::critical("fatal: {}", loaded.status().ToString());
    return 1;
  }
  rkl::kms::KmsSettings settings = *std::move(loaded);
  // The audit chain's MAC key: read, and checked against the KCV the chain was begun with.
  absl::StatusOr<rkl::crypto::SecretBytes> audit_key =
      rkl::audit::LoadAndBindAuditMacKey(pool, rkl::kms::KmsAuditChain(), settings.audit);
  if (!audit_key.ok()) {
    spdlog::critical("fatal: {}", audit_key.status().ToString());
    return 1;
  }

  absl::StatusOr<std::shared_ptr<grpc::Channel>> hsm_channel =
      rkl::rpc::MakeChannel(settings.hsm_target, settings.hsm_channel);
  if (!hsm_channel.ok()) {
    spdlog::critical("fatal: HSM #2 channel (hsm.*): {}", hsm_channel.status().ToString());
    return 1;
  }
  rkl::kms::GrpcHsmPort hsm(*hsm_channel, settings.hsm_timeout);
  // The CA (TR-34 only): without ca.endpoint the TR-34 RPCs answer "tr34: not configured".
  std::unique_ptr<rkl::kms::GrpcCaPort> ca;
  if (!settings.ca_target.empty()) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> ca_channel =
        rkl::rpc::MakeChannel(settings.ca_target, settings.ca_channel);
    if (!ca_channel.ok()) {
      spdlog::critical("fatal: CA channel (ca.*): {}", ca_channel.status().ToString());
      return 1;
    }
    ca = std::make_unique<rkl::kms::GrpcCaPort>(*ca_channel, settings.ca_timeout);
  }
  if (ca == nullptr || settings.core.krd_cas.empty()) {
    spdlog::info("kms: TR-34 not configured (tr34.krd_ca_files and ca.endpoint set it up)");
  }
  rkl::kms::PgKmsRepository repository(pool, *std::move(audit_key));
  // Anchors at start (checking the last run's), seals in the background; at the end of main
  // seals and anchors once more.
  rkl::audit::ServiceAuditChain audit_chain(repository.audit_log(), settings.audit,
                                            settings.replica_id);
  audit_chain.Start();
  // Metrics (docs/kms.md "Metrics"): counters the core and the service move, and gauges
  // read from the database when Prometheus scrapes.
  settings.core.metrics = rkl::kms::KmsMetrics::Register(process_metrics);
  rkl::kms::RegisterKmsStateMetrics(process_metrics, pool, rkl::SystemClock());
  rkl::audit::RegisterAuditChainMetrics(process_metrics, pool, rkl::kms::KmsAuditChain(), "kms",
                                        rkl::SystemClock());
  // BeginAuthentication's wait for a TK (docs/kms.md "Authentication and delivery"): one connection
  // of its own LISTENs for the TKs this database stores, whichever replica stores them.
  rkl::db::Listener tk_listener({.dsn = settings.db.dsn, .channel = rkl::kms::kTkArrivalChannel});
  rkl::kms::TkWaiters tk_waiters(tk_listener, settings.tk_wait_max_waiters);
  if (settings.core.tk_wait_max > absl::ZeroDuration()) {
    tk_listener.Start();
    settings.core.tk_waits = &tk_waiters;
  }
  rkl::kms::KmsCore core(repository, hsm, rkl::SystemClock(), rkl::crypto::FillRandom,
                         settings.core, ca.get());
  rkl::kms::KmsGrpcService service(core, repository.audit_log(), settings.terminal_limits);

  // Client certificates on the service-ca CRL are refused (terminals present none).
  auto crl = rkl::rpc::ServiceCaCrl::StartForServer(settings.crl, settings.server);
  if (!crl.ok()) {
    spdlog::critical("fatal: crl.*: {}", crl.status().ToString());
    return 1;
  }
  // RPCs are counted only where a scrape can read them.
  if (!config.GetString("metrics.listen").empty()) settings.server.metrics = &process_metrics;
  auto server = rkl::rpc::Server::Start(settings.server, {&service});
  if (!server.ok()) {
    spdlog::critical("fatal: {}", server.status().ToString());
    return 1;
  }
  auto metrics_endpoint = rkl::metrics::StartEndpoint(config, process_metrics);
  if (!metrics_endpoint.ok()) {
    spdlog::critical("fatal: {}", metrics_endpoint.status().ToString());
    return 1;
  }

  // Readiness follows the dependencies; the loop ends with the process.
  absl::Notification stop;
  std::thread readiness([&] {
    bool last = false;
    do {
      bool ready = DatabaseReady(pool) && HsmReady(*hsm_channel, settings.hsm_timeout);
      if (ready != last) {
        spdlog::info("kms: {}", ready ? "ready (SERVING)" : "not ready (NOT_SERVING)");
        (*server)->SetServing(ready);
        (*server)->SetServing("rkl.v1.Kms", ready);
        last = ready;
      }
    } while (!stop.WaitForNotificationWithTimeout(kReadinessInterval));
  });
  // Housekeeping (docs/kms.md "Bounded state"): the refusals counted in memory go to
  // refusal_counts every refusals.flush_interval (and at shutdown); expired sessions and old
  // refusal counts are deleted every session.purge_interval. Every replica does both (one
  // statement each, which replicas may run at once), so the tables stay bounded while any
  // replica runs.
  std::thread housekeeping([&] {
    absl::Time last_purge = absl::Now();
    auto flush = [&] {
      absl::StatusOr<int64_t> flushed = core.FlushRefusalCounts();
      if (!flushed.ok()) {
        spdlog::warn("kms: refusal counts not written (kept for the next try): {}",
                     flushed.status().ToString());
      }
    };
    while (!stop.WaitForNotificationWithTimeout(settings.refusal_flush_interval)) {
      flush();
      if (settings.session_purge_interval <= absl::ZeroDuration() ||
          absl::Now() - last_purge < settings.session_purge_interval) {
        continue;
      }
      last_purge = absl::Now();
      absl::StatusOr<int64_t> sessions = core.PurgeExpiredSessions();
      absl::StatusOr<int64_t> counts = core.PurgeRefusalCounts();
      if (!sessions.ok() || !counts.ok()) {
        spdlog::warn("kms: purge failed: sessions {}, refusal counts {}",
                     sessions.status().ToString(), counts.status().ToString());
      } else if (*sessions > 0 || *counts > 0) {
        spdlog::debug("kms: purged {} expired session(s), {} refusal count row(s)", *sessions,
                      *counts);
      }
    }
    flush();
  });
  const int signal = rkl::rpc::WaitForShutdownSignal();
  spdlog::info("shutting down (signal {}), grace period {}", signal,
               absl::FormatDuration(settings.shutdown_grace));
  // Calls waiting for a TK answer now instead of holding the grace period.
  tk_waiters.Close();
  (*server)->Shutdown(settings.shutdown_grace);
  spdlog::info("shut down");
  tk_listener.Stop();
  stop.Notify();
  readiness.join();
  housekeeping.join();
  return 0;
}
