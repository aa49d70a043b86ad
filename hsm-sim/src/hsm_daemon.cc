#include "hsm_daemon.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "db_roles.h"
#include "hsm_metrics.h"
#include "lmk.h"
#include "pg_lmk_binding.h"
#include "rkl/audit/audit_metrics.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/pool_metrics.h"
#include "rkl/db/schema_roles.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/hsm/migrations.h"
#include "spdlog/spdlog.h"

namespace rkl::hsm {

void DeclareHsmConfig(ConfigSchema& schema) {
  schema
      .String("hsm_id",
              "Name of this HSM instance, e.g. hsm-mtms or hsm-kms. Recorded in the database "
              "at first start and part of the audit key derivation; must not change.")
      .Default("hsm");
  schema
      .Enum("role", {"mtms", "kms"},
            "what this instance is for: mtms = HSM #1 (work key pair and translation, for "
            "MTMS), kms = HSM #2 (import, authentication, TMK delivery and revocation, for "
            "KMS). Each role serves only its own commands")
      .Required();
  schema.Path("translation.operator_ca_file",
              "role mtms: PEM file with the operator-ca certificate(s); HSM #1 translates only "
              "transport keys whose package an operator of this CA signed (required for role "
              "mtms)");
  schema
      .String("tr34.krd_ca_files",
              "role kms, TR-34: comma-separated PEM files with the KRD CA certificates (the "
              "terminal manufacturers' CAs) whose KRDs this HSM builds key tokens for. Empty: "
              "the TR-34 commands answer FAILED_PRECONDITION \"tr34: not configured\"")
      .Default("");
  schema.String("listen", "host:port to serve gRPC on (HSM #1 50052, HSM #2 50053)")
      .Default("0.0.0.0:50052");
  rpc::DeclareTlsConfig(schema);
  metrics::DeclareMetricsConfig(schema);
  schema
      .String("db.dsn",
              "libpq DSN of this instance's own database, e.g. "
              "'host=db dbname=rkl_hsm_kms user=rkl_hsm connect_timeout=5'")
      .Required()
      .Secret();
  db::DeclareOwnerDsnConfig(schema);
  db::DeclareStatementTimeoutConfig(schema);
  schema.Int("db.pool_size", "database connections at most").Default("8").Range(1, 256);
  schema
      .Path("lmk.file",
            "file holding the LMK: 32 raw bytes or 64 hex digits, mode 0600 or 0400, readable "
            "only by the daemon's user")
      .Required();
  schema
      .String("authz.operational_identities",
              "comma-separated mTLS identities allowed the role's commands (HSM #1: mtms, "
              "HSM #2: kms); admin:* identities are allowed only the ceremony, key-state and "
              "audit commands, and only they are")
      .Required();
  rpc::DeclareRevocationConfig(schema);
  schema.Duration("ceremony.default_ttl", "lifetime of a key ceremony that sets no ttl_seconds")
      .Default("15m");
  schema.Int("key_cache.size", "unsealed keys kept in memory (LRU, zeroed on eviction); 0 = none")
      .Default("256")
      .Range(0, 100000);
  schema
      .Duration("audit.seal_interval",
                "how often committed audit records are MAC-chained (commands write theirs "
                "with a per-record MAC and never wait for the chain); 0 = only when the "
                "chain is verified and at shutdown")
      .Default("100ms");
  schema
      .String("audit.anchor_file",
              "file the audit chain's head is anchored to, outside the HSM's database (an "
              "anchor is MACed under the LMK; rklctl hsm audit-verify --anchor checks the chain "
              "against it). Keep it where the database's administrators cannot write. Empty: "
              "no anchors written (docs/hsm.md, Audit)")
      .Default("");
  schema
      .Duration("audit.anchor_interval",
                "how often the anchor file is rewritten with the chain's head; records chained "
                "after the last anchor can be removed undetected (0 = only at start, shutdown "
                "and AnchorAuditChain)")
      .Default("1m");
  schema.Enum("log.format", {"text", "json"}, "log line format").Default("text");
  schema.Enum("log.level", {"trace", "debug", "info", "warn", "error"}, "lowest level logged")
      .Default("info");
  schema
      .Bool("testing.fail_self_test",
            "TEST ONLY: make a self-test fail so the NOT_SERVING path can be tested. Never set "
            "it in production.")
      .Default("false");
}

absl::StatusOr<HsmDaemonOptions> HsmOptionsFromConfig(const Config& config) {
  HsmDaemonOptions o;
  o.hsm_id = config.GetString("hsm_id");
  o.role = config.GetEnum("role") == "mtms" ? HsmRole::kMtms : HsmRole::kKms;
  if (config.Has("translation.operator_ca_file")) {
    o.operator_ca_file = config.GetPath("translation.operator_ca_file");
  }
  if (*o.role == HsmRole::kMtms && o.operator_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "config: translation.operator_ca_file: required for role mtms (the operator-ca "
        "certificate HSM #1 verifies package signatures against)");
  }
  for (absl::string_view file : absl::StrSplit(config.GetString("tr34.krd_ca_files"), ',')) {
    std::string path(absl::StripAsciiWhitespace(file));
    if (!path.empty()) o.krd_ca_files.push_back(std::move(path));
  }
  o.listen_address = config.GetString("listen");
  o.metrics_listen = config.GetString("metrics.listen");
  o.tls = rpc::TlsFilesFromConfig(config);
  o.database_dsn = config.GetString("db.dsn");
  o.owner_dsn = config.GetString("db.owner_dsn");
  o.db_pool_size = static_cast<int>(config.GetInt("db.pool_size"));
  o.db_timeouts = db::StatementTimeoutsFromConfig(config);
  o.lmk_file = config.GetPath("lmk.file");
  for (absl::string_view id :
       absl::StrSplit(config.GetString("authz.operational_identities"), ',')) {
    std::string identity(absl::StripAsciiWhitespace(id));
    if (identity.empty()) continue;
    if (identity == "*" || identity.starts_with("admin:")) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: authz.operational_identities: '", identity,
                       "' is not a service identity (admins never get operational commands)"));
    }
    o.operational_identities.push_back(identity);
  }
  if (o.operational_identities.empty()) {
    return absl::InvalidArgumentError(
        "config: authz.operational_identities: name at least one identity, e.g. mtms or kms");
  }
  o.ceremony_ttl = config.GetDuration("ceremony.default_ttl");
  o.key_cache_size = static_cast<size_t>(config.GetInt("key_cache.size"));
  o.audit_seal_interval = config.GetDuration("audit.seal_interval");
  if (o.audit_seal_interval < absl::ZeroDuration() || o.audit_seal_interval > absl::Minutes(10)) {
    return absl::InvalidArgumentError(
        "config: audit.seal_interval: must be between 0 and 10m (e.g. 100ms)");
  }
  o.anchor_file = config.GetString("audit.anchor_file");
  o.anchor_interval = config.GetDuration("audit.anchor_interval");
  o.fail_self_test = config.GetBool("testing.fail_self_test");
  o.crl = rpc::ServiceCaCrlOptionsFromConfig(config, o.tls);
  return o;
}

namespace {

// CA certificates from a PEM file (the operator-ca of role mtms, the KRD CAs of TR-34):
// every certificate in it, each a CA; errors name the configuration `key`.
absl::StatusOr<std::vector<crypto::Certificate>> LoadCaCertificates(const std::string& file,
                                                                    const std::string& key) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(key, ": cannot read ", file));
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<crypto::Certificate>> cas =
      crypto::Certificate::ParsePemBundle(text.str());
  if (!cas.ok() || cas->empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": ", file, " holds no PEM certificate"));
  }
  for (const crypto::Certificate& ca : *cas) {
    if (!ca.IsCa()) {
      return absl::FailedPreconditionError(absl::StrCat(
          key, ": ", file, ": '", ca.SubjectCommonName(), "' is not a CA certificate"));
    }
  }
  return cas;
}

}  // namespace

absl::Status HsmDaemon::MigrateOnly(const std::string& database_dsn, const std::string& owner_dsn) {
  db::ConnectionPool pool(db::PoolOptions{.dsn = database_dsn, .max_size = 1});
  return db::SetUpDaemonSchema(pool, owner_dsn, true, Migrations(), kHsmRuntimeGrants);
}

absl::StatusOr<std::unique_ptr<HsmDaemon>> HsmDaemon::Start(HsmDaemonOptions options) {
  std::unique_ptr<HsmDaemon> d(new HsmDaemon());
  const Clock clock = options.clock ? options.clock : SystemClock();
  if (!options.role) {
    return absl::InvalidArgumentError("role: required (mtms for HSM #1, kms for HSM #2)");
  }
  std::vector<crypto::Certificate> operator_cas;
  if (*options.role == HsmRole::kMtms) {
    if (options.operator_ca_file.empty()) {
      return absl::InvalidArgumentError("translation.operator_ca_file: required for role mtms");
    }
    RKL_ASSIGN_OR_RETURN(
        operator_cas, LoadCaCertificates(options.operator_ca_file, "translation.operator_ca_file"));
  }
  // TR-34 is HSM #2's (role kms); role mtms serves none of its commands, so its KRD CAs
  // would be unused.
  std::vector<crypto::Certificate> krd_cas;
  for (const std::string& file : options.krd_ca_files) {
    RKL_ASSIGN_OR_RETURN(std::vector<crypto::Certificate> cas,
                         LoadCaCertificates(file, "tr34.krd_ca_files"));
    for (crypto::Certificate& ca : cas) krd_cas.push_back(std::move(ca));
  }

  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes lmk, LoadLmkFile(options.lmk_file));
  RKL_ASSIGN_OR_RETURN(d->lmk_kcv_, LmkKcv(lmk));

  // Generic plans: PostgreSQL otherwise re-plans each execution of a statement whose
  // custom plan looks cheaper — for the one-write statement (KeyRecordStore::TransactOneWrite)
  // planning cost more than running it. Each statement is written to be an index lookup
  // as a generic plan too, and tests check the plans of the hot ones (key_store_pgtest).
  // Database deadlines below the callers' (hsm.timeout 5 s at KMS) on the command pool
  // only; the audit pool's sealer may wait for its chain lock as long as it must.
  std::vector<std::pair<std::string, std::string>> settings = {
      {"plan_cache_mode", "force_generic_plan"}};
  for (auto& setting : db::StatementTimeoutSettings(options.db_timeouts)) {
    settings.push_back(std::move(setting));
  }
  d->pool_ = std::make_unique<db::ConnectionPool>(db::PoolOptions{
      .dsn = options.database_dsn, .max_size = options.db_pool_size, .settings = settings});
  db::RegisterPoolMetrics(*d->metrics_, *d->pool_, "main");
  RKL_RETURN_IF_ERROR(
      db::SetUpDaemonSchema(*d->pool_, options.owner_dsn, false, Migrations(), kHsmRuntimeGrants));
  RKL_RETURN_IF_ERROR(
      BindLmkToDatabase(*d->pool_, options.hsm_id, lmk, options.lmk_file, NowUnixMs(clock)));

  d->self_test_ = RunSelfTests(options.fail_self_test);
  if (d->self_test_.passed) {
    spdlog::info("self-tests passed");
  } else {
    spdlog::critical(
        "self-tests FAILED ({}): serving NOT_SERVING, every cryptographic command "
        "is refused",
        absl::StrJoin(d->self_test_.failures, ", "));
  }

  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes audit_key, DeriveAuditKey(lmk, options.hsm_id));
  // Audit group writes and the sealer get connections of their own (see PgAuditLog).
  d->audit_pool_ = std::make_unique<db::ConnectionPool>(
      db::PoolOptions{.dsn = options.database_dsn, .max_size = 2});
  db::RegisterPoolMetrics(*d->metrics_, *d->audit_pool_, "audit");
  d->audit_ = std::make_unique<PgAuditLog>(*d->pool_, *d->audit_pool_, std::move(audit_key));
  d->audit_->ConfigureAnchors({.instance_id = options.hsm_id,
                               .file = options.anchor_file,
                               .interval = options.anchor_interval,
                               .now_ms = [clock] { return NowUnixMs(clock); }});
  d->anchors_ = !options.anchor_file.empty();
  if (d->anchors_) {
    // Checks the anchor left by the last run before anything else is chained: a chain cut
    // while the HSM was down is reported here (and audited), and the file is kept.
    if (auto anchored = d->audit_->Anchor(); !anchored.ok()) {
      spdlog::error("audit: anchoring at start-up failed: {}", anchored.status().ToString());
    }
  }
  if (options.audit_seal_interval > absl::ZeroDuration()) {
    d->audit_->Start(options.audit_seal_interval);
  }
  d->records_ = std::make_unique<PgKeyRecordStore>(*d->pool_, *d->audit_);
  d->barrier_ = std::make_unique<KeyBarrier>(*d->records_, lmk, options.key_cache_size);
  crypto::RandomSource rng = options.rng ? options.rng : crypto::RandomSource(crypto::FillRandom);
  d->core_ = std::make_unique<HsmCore>(*d->barrier_, *d->audit_, clock, std::move(rng),
                                       HsmCoreOptions{.self_test_passed = d->self_test_.passed,
                                                      .default_ceremony_ttl = options.ceremony_ttl,
                                                      .operator_cas = std::move(operator_cas),
                                                      .krd_cas = std::move(krd_cas),
                                                      .hsm_id = options.hsm_id});
  d->service_ = std::make_unique<HsmGrpcService>(*d->core_, *options.role,
                                                 options.operational_identities, d->metrics_.get());
  // Read when Prometheus scrapes (docs/hsm.md, "Metrics").
  audit::RegisterAuditChainMetrics(*d->metrics_, *d->pool_, d->audit_->spec(), "hsm", clock);
  RegisterHsmMetrics(*d->metrics_, *d->pool_, d->self_test_.passed);

  rpc::ServerOptions server_options{
      .listen_address = options.listen_address,
      .tls = options.tls,
      .client_cert_mode = rpc::ClientCertMode::kRequireAndVerify,
      .start_serving = false,
      // RPCs are counted only where a scrape can read them.
      .metrics = options.metrics_listen.empty() ? nullptr : d->metrics_.get()};
  if (options.crl.has_value()) {
    RKL_ASSIGN_OR_RETURN(d->crl_, rpc::ServiceCaCrl::Create(*options.crl));
    // Not listening before a first CRL is in force: clients see UNAVAILABLE and retry.
    RKL_RETURN_IF_ERROR(d->crl_->Start());
    d->crl_->ConfigureServer(server_options);
  }
  RKL_ASSIGN_OR_RETURN(d->server_, rpc::Server::Start(server_options, {d->service_.get()}));
  if (!options.metrics_listen.empty()) {
    RKL_ASSIGN_OR_RETURN(d->metrics_endpoint_,
                         metrics::Endpoint::Start(options.metrics_listen, *d->metrics_));
  }
  d->server_->SetServing(kHsmServiceName, d->self_test_.passed);
  d->server_->SetServing(d->self_test_.passed);
  spdlog::info("rkl-hsm '{}' (role {}) serving on port {} (LMK KCV {}, operational identities: {})",
               options.hsm_id, HsmRoleName(*options.role), d->server_->port(), d->lmk_kcv_,
               absl::StrJoin(options.operational_identities, ","));
  return d;
}

HsmDaemon::~HsmDaemon() {
  if (server_) server_->Shutdown(absl::Seconds(5));
  if (audit_) {
    // Chain what the last commands wrote; if the database is gone they stay pending,
    // durable, and the next start seals them.
    audit_->Stop();
    if (auto sealed = audit_->Seal(); !sealed.ok()) {
      spdlog::warn("audit: final seal failed: {}", sealed.status().ToString());
    } else if (anchors_) {
      if (auto anchored = audit_->Anchor(); !anchored.ok()) {
        spdlog::warn("audit: final anchor failed: {}", anchored.status().ToString());
      }
    }
  }
}

}  // namespace rkl::hsm
