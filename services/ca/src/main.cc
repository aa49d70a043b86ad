// rkl-ca — the certificate authority daemon (PROTOCOL §2). Serves rkl.v1.CertificateAuthority
// over mTLS from its own PostgreSQL database; issuer keys are opened with the CA master key.
// The database must have been initialised by `rklctl pki init` (see docs/pki.md).

#include <memory>

#include "ca_config.h"
#include "ca_core.h"
#include "ca_db_roles.h"
#include "ca_grpc_service.h"
#include "ca_metrics.h"
#include "ca_pg_repository.h"
#include "grpc_hsm_key_source.h"
#include "master_key.h"
#include "rkl/ca/migrations.h"
#include "rkl/common/config.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/random.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/pool_metrics.h"
#include "rkl/db/schema_roles.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/daemon.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/server.h"
#include "rkl/rpc/shutdown.h"
#include "rkl/rpc/tls.h"
#include "spdlog/spdlog.h"

namespace {

constexpr char kProgram[] = "rkl-ca";

rkl::ConfigSchema MakeSchema() {
  rkl::ConfigSchema schema("RKL_CA");
  schema.String("listen", "host:port to serve rkl.v1.CertificateAuthority on")
      .Default("0.0.0.0:50051");
  rkl::rpc::DeclareTlsConfig(schema);
  rkl::metrics::DeclareMetricsConfig(schema);
  schema.String("db.dsn", "libpq DSN of the CA's own database (rkl_ca)").Required().Secret();
  rkl::db::DeclareOwnerDsnConfig(schema);
  rkl::db::DeclareStatementTimeoutConfig(schema);
  schema.Int("db.pool_size", "maximum open database connections").Default("4").Range(1, 64);
  schema
      .Path("master_key_file",
            "CA master key: 32 raw bytes or 64 hex digits, mode 0600 (see docs/pki.md)")
      .Required();
  rkl::ca::DeclarePolicyConfig(schema);
  schema
      .Duration("crl.refresh_interval",
                "how often the service-ca CRL this server enforces is re-read from the database "
                "(besides right after each revocation here): bounds how late a revocation made "
                "through another CA replica takes effect")
      .Default("60s");
  schema
      .String("hsm.endpoints",
              "the HSMs whose KDH signing keys this CA certifies, as hsm-id=host:port,... (the "
              "CA asks each HSM, under its own TLS identity, for the key it certifies; an HSM "
              "not listed gets no KDH certificate)")
      .Default("");
  schema.Duration("hsm.timeout", "deadline of one call to an HSM").Default("5s");
  schema.Duration("shutdown_grace", "how long in-flight calls may finish on SIGTERM")
      .Default("10s");
  schema.Enum("log.format", {"text", "json"}, "log line format").Default("text");
  schema.Enum("log.level", {"trace", "debug", "info", "warn", "error"}, "minimum log level")
      .Default("info");
  return schema;
}

int Fatal(const absl::Status& status) {
  spdlog::critical("start-up failed: {}", status.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  rkl::ConfigSchema schema = MakeSchema();
  const auto [config, migrate_only] = rkl::rpc::StartDaemonOrExit(schema, kProgram, argc, argv);

  // Before everything that registers metrics in it, so it outlives them.
  rkl::metrics::Metrics process_metrics;
  rkl::db::ConnectionPool pool(rkl::db::PoolOptionsFromConfig(config));
  rkl::db::RegisterPoolMetrics(process_metrics, pool, "main");
  spdlog::info("database {}", pool.redacted_dsn());
  if (absl::Status s = rkl::db::SetUpDaemonSchema(pool, config, migrate_only, rkl::ca::Migrations(),
                                                  rkl::ca::kCaRuntimeGrants);
      !s.ok()) {
    return Fatal(s);
  }
  if (migrate_only) return 0;

  absl::StatusOr<rkl::ca::CaPolicy> policy = rkl::ca::PolicyFromConfig(config);
  if (!policy.ok()) return Fatal(policy.status());
  absl::StatusOr<rkl::ca::MasterKey> master_key =
      rkl::ca::MasterKey::LoadFromFile(config.GetPath("master_key_file"));
  if (!master_key.ok()) return Fatal(master_key.status());

  const rkl::rpc::TlsFiles tls = rkl::rpc::TlsFilesFromConfig(config);
  auto endpoints = rkl::ca::ParseHsmEndpoints(config.GetString("hsm.endpoints"));
  if (!endpoints.ok()) return Fatal(endpoints.status());
  // Channels connect lazily: the HSMs need not be up yet (the CA asks them only when a KDH
  // key is certified).
  auto hsm_keys =
      rkl::ca::GrpcHsmKeySource::Create(*endpoints, tls, config.GetDuration("hsm.timeout"));
  if (!hsm_keys.ok()) return Fatal(hsm_keys.status());
  for (const auto& [id, target] : *endpoints) spdlog::info("HSM {} at {}", id, target);

  rkl::ca::PgCaRepository repository(&pool);
  rkl::ca::RegisterCaMetrics(process_metrics, repository, rkl::SystemClock());
  rkl::ca::CaCore core(&repository, &*master_key, *policy, rkl::SystemClock(),
                       rkl::crypto::FillRandom, hsm_keys->get());
  // A wrong master key or an uninitialised database cannot be fixed by retrying: stop here.
  if (absl::Status ready = core.CheckReady(); !ready.ok()) return Fatal(ready);
  spdlog::info("master key KCV {} matches the CA database", master_key->KcvHex());

  // The CA enforces its own service-ca CRL on its clients, read from its database: at once
  // after each revocation it makes, and on a schedule for revocations by other replicas.
  absl::StatusOr<std::string> ca_pem = rkl::rpc::ReadPemFile(tls.ca_file, "tls.ca_file");
  if (!ca_pem.ok()) return Fatal(ca_pem.status());
  auto revocation = rkl::rpc::RevocationList::Create(*ca_pem, rkl::SystemClock());
  if (!revocation.ok()) return Fatal(revocation.status());
  rkl::rpc::CrlRefresher refresher(
      revocation->get(),
      [&core]() -> absl::StatusOr<std::string> {
        RKL_ASSIGN_OR_RETURN(rkl::ca::CrlRecord crl, core.GetCrl(rkl::ca::IssuerId::kServiceCa));
        return std::string(crl.crl_der.begin(), crl.crl_der.end());
      },
      config.GetDuration("crl.refresh_interval"));
  if (absl::StatusOr<uint64_t> first = refresher.RefreshNow(); !first.ok()) {
    return Fatal(first.status());
  }
  refresher.Start();

  rkl::ca::CaGrpcService service(&core, [&refresher] { (void)refresher.RefreshNow(); });
  auto server = rkl::rpc::Server::Start(
      {.listen_address = config.GetString("listen"),
       .tls = tls,
       .revocation = revocation->get(),
       .refresh_crl = [&refresher] { return refresher.RefreshNow(); },
       // RPCs are counted only where a scrape can read them.
       .metrics = config.GetString("metrics.listen").empty() ? nullptr : &process_metrics},
      {&service});
  if (!server.ok()) return Fatal(server.status());
  auto metrics_endpoint = rkl::metrics::StartEndpoint(config, process_metrics);
  if (!metrics_endpoint.ok()) return Fatal(metrics_endpoint.status());
  (*server)->SetServing("rkl.v1.CertificateAuthority", true);
  spdlog::info("serving rkl.v1.CertificateAuthority on port {}", (*server)->port());
  (*server)->RunUntilShutdownSignal(config.GetDuration("shutdown_grace"));
  refresher.Stop();
  return 0;
}
