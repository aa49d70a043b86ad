#include "kms_config.h"

#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/x509.h"
#include "rkl/db/schema_roles.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/tls.h"

namespace rkl::kms {

ConfigSchema MakeKmsConfigSchema() {
  ConfigSchema s(kKmsEnvPrefix);
  s.String("listen", "host:port the Kms service listens on (terminals, MTMS and admins)")
      .Default("0.0.0.0:50055");
  rpc::DeclareTlsConfig(s, "tls");
  rpc::DeclareRevocationConfig(s);
  metrics::DeclareMetricsConfig(s);
  db::DeclareDatabaseConfig(
      s, {.dsn = "libpq DSN of the KMS database (rkl_kms); include connect_timeout",
          .pool_size = "database connections per process",
          .pool_size_default = "8"});
  s.String("hsm.endpoint", "gRPC target of HSM #2 (rkl-hsm serving KMS)")
      .Default("localhost:50053");
  s.String("hsm.authority", "name HSM #2's certificate must carry").Default("hsm-kms");
  rpc::DeclareTlsConfig(s, "hsm.tls");
  s.Duration("hsm.timeout", "deadline of each HSM #2 call").Default("5s");
  s.Int("hsm.pk_index", "HSM #2 key index of PK (from the key ceremony)")
      .Required()
      .Range(1, INT64_MAX);
  s.Int("hsm.mak_index", "HSM #2 key index of MAK (from the key ceremony)")
      .Required()
      .Range(1, INT64_MAX);
  // TR-34 (docs/kms.md "TR-34 terminals"): off unless tr34.krd_ca_files names a KRD CA.
  s.String("tr34.krd_ca_files",
           "PEM files of the KRD CAs (terminal manufacturers) whose KRD certificates KMS "
           "accepts, separated by commas; empty: the TR-34 RPCs answer FAILED_PRECONDITION")
      .Default("");
  s.String("tr34.kdh_hsm_id", "HSM id named in the KDH certificate (CN kdh:<hsm-id>:<index>)")
      .Default("hsm-kms");
  s.Duration("tr34.crl_refresh_margin",
             "the kdh-ca CRL is fetched again this long before its nextUpdate")
      .Default("10m");
  s.Duration("tr34.crl_max_age",
             "the kdh-ca CRL is fetched again once KMS's copy is this old: the longest a revoked "
             "KDH certificate keeps reaching terminals as good (a CA outage serves the copy "
             "until its nextUpdate)")
      .Default("1m");
  s.String("ca.endpoint",
           "gRPC target of the CA (KDH certificate and kdh-ca CRL, TR-34 only); empty: none")
      .Default("");
  s.String("ca.authority", "name the CA's certificate must carry").Default("ca");
  s.Duration("ca.timeout", "deadline of each CA call").Default("5s");
  s.Duration("authentication.tk_wait_max",
             "the longest a BeginAuthentication call (wait_ms) waits for an SN's transport key "
             "to arrive from MTMS before answering NOT_FOUND; 0: no call waits")
      .Default("20s");
  s.Int("authentication.tk_wait_max_waiters",
        "BeginAuthentication calls that may wait for a transport key at once; beyond, a call "
        "answers at once")
      .Default("1024")
      .Range(1, 1'000'000);
  s.Duration("session.ttl", "lifetime of an authentication session (PROTOCOL §7)").Default("60s");
  s.Duration("session.retention",
             "how long after its expiry a session is kept before the purge deletes it; at "
             "least session.ttl")
      .Default("10m");
  s.Duration("session.purge_interval",
             "how often this replica deletes sessions past "
             "session.retention (0: never)")
      .Default("1m");
  s.Duration("refusals.flush_interval",
             "how often this replica adds the terminal refusals it counted to refusal_counts "
             "(docs/kms.md \"Bounded state\"); more than 0")
      .Default("10s");
  s.Duration("refusals.retention", "how long refusal counts are kept").Default("24h");
  s.Int("lockout.threshold",
        "consecutive failed proofs that lock an SN until an admin unlocks it (docs/kms.md "
        "\"Lockout\")")
      .Default("100")
      .Range(1, 1'000'000);
  s.Duration("lockout.backoff_base",
             "wait after an SN's first failed proof, doubling per further failure; 0: none")
      .Default("1s");
  s.Duration("lockout.backoff_max", "the longest wait between an SN's failed proofs")
      .Default("10m");
  // Terminal RPCs (Begin/Complete/ConfirmInstallation) per source address and per SN
  // (docs/kms.md "Rate limits"). per_minute 0 turns a limit off.
  rpc::DeclarePublicCallLimitsConfig(s, "terminal calls");
  audit::DeclareAuditConfig(s, "KMS");
  s.String("replica_id", "this replica's name in its audit anchors (default: kms@<host name>)")
      .Default("");
  s.Enum("log.format", {"text", "json"}, "log line format").Default("text");
  s.Enum("log.level", {"trace", "debug", "info", "warn", "error"}, "minimum log level")
      .Default("info");
  s.Duration("shutdown.grace", "how long in-flight calls may finish on SIGTERM").Default("10s");
  return s;
}

absl::StatusOr<KmsSettings> KmsSettingsFromConfig(const Config& config) {
  KmsSettings k;
  k.server.listen_address = config.GetString("listen");
  k.server.tls = rpc::TlsFilesFromConfig(config, "tls");
  // One port for everyone: terminals come without a certificate, MTMS and admins with
  // one, and each RPC authorizes by identity.
  k.server.client_cert_mode = rpc::ClientCertMode::kOptionalVerified;
  k.server.start_serving = false;
  k.db.dsn = config.GetString("db.dsn");
  k.owner_dsn = config.GetString("db.owner_dsn");
  k.db.max_size = static_cast<int>(config.GetInt("db.pool_size"));
  k.db.settings = db::StatementTimeoutSettings(db::StatementTimeoutsFromConfig(config));
  k.hsm_target = config.GetString("hsm.endpoint");
  k.hsm_channel.tls = rpc::TlsFilesFromConfig(config, "hsm.tls");
  k.hsm_channel.authority = config.GetString("hsm.authority");
  k.hsm_timeout = config.GetDuration("hsm.timeout");
  k.core.pk_index = static_cast<uint64_t>(config.GetInt("hsm.pk_index"));
  k.core.mak_index = static_cast<uint64_t>(config.GetInt("hsm.mak_index"));
  k.core.tk_wait_max = config.GetDuration("authentication.tk_wait_max");
  k.tk_wait_max_waiters = static_cast<size_t>(config.GetInt("authentication.tk_wait_max_waiters"));
  k.core.session_ttl = config.GetDuration("session.ttl");
  k.core.session_retention = config.GetDuration("session.retention");
  // A session claimed just before its expiry is still in flight for up to an HSM call and
  // a write; retaining every session at least one more ttl leaves that call its row.
  if (k.core.session_retention < k.core.session_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session.retention: ", absl::FormatDuration(k.core.session_retention),
        " is shorter than session.ttl (", absl::FormatDuration(k.core.session_ttl), ")"));
  }
  k.session_purge_interval = config.GetDuration("session.purge_interval");
  k.refusal_flush_interval = config.GetDuration("refusals.flush_interval");
  if (k.refusal_flush_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("refusals.flush_interval: must be more than 0");
  }
  k.core.refusal_retention = config.GetDuration("refusals.retention");
  k.core.lockout_threshold = static_cast<int>(config.GetInt("lockout.threshold"));
  k.core.backoff_base = config.GetDuration("lockout.backoff_base");
  k.core.backoff_max = config.GetDuration("lockout.backoff_max");
  k.terminal_limits = rpc::PublicCallLimitsFromConfig(config);
  for (absl::string_view file :
       absl::StrSplit(config.GetString("tr34.krd_ca_files"), ',', absl::SkipWhitespace())) {
    const std::string path(absl::StripAsciiWhitespace(file));
    absl::StatusOr<std::string> pem = rpc::ReadPemFile(path, "KRD CA certificate");
    if (!pem.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tr34.krd_ca_files: ", path, ": ", pem.status().message()));
    }
    absl::StatusOr<crypto::Certificate> ca = crypto::Certificate::FromPem(*pem);
    if (!ca.ok() || !ca->IsCa()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tr34.krd_ca_files: ", path, ": not a PEM CA certificate"));
    }
    k.core.krd_cas.push_back(*std::move(ca));
  }
  k.core.kdh_hsm_id = config.GetString("tr34.kdh_hsm_id");
  k.core.crl_refresh_margin = config.GetDuration("tr34.crl_refresh_margin");
  k.core.crl_max_age = config.GetDuration("tr34.crl_max_age");
  k.ca_target = config.GetString("ca.endpoint");
  k.ca_channel.tls = k.hsm_channel.tls;  // KMS's own client identity, as towards HSM #2
  k.ca_channel.authority = config.GetString("ca.authority");
  k.ca_timeout = config.GetDuration("ca.timeout");
  k.shutdown_grace = config.GetDuration("shutdown.grace");
  k.crl = rpc::ServiceCaCrlOptionsFromConfig(config, k.server.tls);
  RKL_ASSIGN_OR_RETURN(k.audit, audit::AuditSettingsFromConfig(config));
  k.replica_id = config.GetString("replica_id");
  if (k.replica_id.empty()) {
    char host[256] = {};
    k.replica_id = absl::StrCat("kms@", ::gethostname(host, sizeof(host) - 1) == 0 ? host : "");
  }
  return k;
}

}  // namespace rkl::kms
