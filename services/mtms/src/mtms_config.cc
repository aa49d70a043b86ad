#include "mtms_config.h"

#include <unistd.h>

#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rkl/audit/service_chain.h"
#include "rkl/db/schema_roles.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/public_call_gate.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/tls.h"

namespace rkl::mtms {
namespace {

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "mtms";
  return name;
}

// A batcher's two keys (mtms_peer_batcher.h): items per call at most (16 by default, 1 =
// no batching), and calls in flight at once.
void DeclareBatcher(ConfigSchema& schema, const std::string& batch_key, std::string batch_help,
                    const std::string& calls_key, std::string calls_help,
                    const char* calls_default) {
  schema.Int(batch_key, std::move(batch_help)).Default("16").Range(1, 64);
  schema.Int(calls_key, std::move(calls_help)).Default(calls_default).Range(1, 64);
}

PeerBatcherOptions BatcherOptions(const Config& config, std::string_view batch_key,
                                  std::string_view calls_key) {
  return PeerBatcherOptions{.max_batch = static_cast<int>(config.GetInt(batch_key)),
                            .max_calls = static_cast<int>(config.GetInt(calls_key))};
}

}  // namespace

ConfigSchema MakeMtmsConfigSchema() {
  ConfigSchema schema(kEnvPrefix);
  schema.String("listen", "host:port the gRPC server listens on").Default("0.0.0.0:50054");
  // One service certificate (CN = DNS SAN = "mtms") serves both directions: the server
  // side, and the client side towards hsm-mtms, ca and kms.
  rpc::DeclareTlsConfig(schema);
  rpc::DeclareRevocationConfig(schema);
  metrics::DeclareMetricsConfig(schema);
  db::DeclareDatabaseConfig(
      schema, {.dsn = "libpq DSN of the rkl_mtms database (include connect_timeout)",
               .pool_size = "maximum open database connections; at least forwarder.workers + "
                            "4 (checked at start-up)",
               .pool_size_default = "24"});

  schema.String("hsm.endpoint", "gRPC target of HSM #1").Default("hsm-mtms:50052");
  schema.String("hsm.authority", "name HSM #1's certificate must carry").Default("hsm-mtms");
  schema.String("hsm.id", "HSM #1's id; the work certificate CN is hsm-work:<id>:<index>")
      .Default("hsm-mtms");
  schema
      .Int("hsm.pk_index",
           "HSM #1 key index of PK (from the key ceremony); 0 = not yet: packages wait")
      .Default("0")
      .Range(0, INT64_MAX);
  schema
      .Int("hsm.mak_index",
           "HSM #1 key index of MAK (from the key ceremony); 0 = not yet: packages wait")
      .Default("0")
      .Range(0, INT64_MAX);
  DeclareBatcher(schema, "hsm.translate_batch",
                 "packages sent to HSM #1 in one TranslateTransportKeys call at most: the "
                 "forwarder workers' concurrent translations are combined (1 = one call per "
                 "package)",
                 "hsm.translate_calls", "batched translate calls to HSM #1 in flight at once", "2");
  schema.String("ca.endpoint", "gRPC target of the CA").Default("ca:50051");
  schema.String("ca.authority", "name the CA's certificate must carry").Default("ca");
  schema.Duration("ca.crl_refresh", "how often the operator-ca CRL is re-fetched").Default("5m");
  schema.String("kms.endpoint", "gRPC target of KMS").Default("kms:50055");
  schema.String("kms.authority", "name KMS's certificate must carry").Default("kms");
  DeclareBatcher(schema, "kms.submit_batch",
                 "packages sent to KMS in one SubmitTransportKeys call at most: the forwarder "
                 "workers' concurrent submissions are combined (1 = one call per package)",
                 "kms.submit_calls", "batched submit calls to KMS in flight at once", "1");
  schema.Duration("rpc.timeout", "deadline of each call to HSM #1, the CA and KMS").Default("10s");

  schema.Enum("work_key.rsa_bits", {"2048", "3072"}, "default size of new work keys")
      .Default("2048");
  schema.Duration("intake.clock_skew", "accepted distance of package created_at from MTMS time")
      .Default("5m");

  schema.Bool("forwarder.enabled", "run the background forwarder in this replica").Default("true");
  schema.Duration("forwarder.interval", "time between the forwarder's periodic claims")
      .Default("5s");
  schema.Int("forwarder.batch", "rows claimed per batch").Default("32").Range(1, 1000);
  schema
      .Int("forwarder.workers",
           "rows of a batch forwarded at once (threads calling HSM #1 and KMS in parallel)")
      .Default("16")
      .Range(1, 256);
  DeclareBatcher(schema, "forwarder.finish_batch",
                 "FORWARDED rows the workers write together in one statement at most "
                 "(1 = one statement per package)",
                 "forwarder.finish_calls", "such FORWARDED writes in flight at once", "1");
  schema.Duration("forwarder.initial_backoff", "wait after the first failed attempt").Default("1s");
  schema.Duration("forwarder.max_backoff", "cap of the exponential backoff").Default("5m");
  schema.Duration("forwarder.lease", "how long a claimed row stays with this replica")
      .Default("2m");
  // Public RPCs (GetWorkCertificate, SubmitTransportKey, GetOwnSubmission) per source
  // address, and SubmitTransportKey per package SN (docs/mtms.md "Rate limits").
  rpc::DeclarePublicCallLimitsConfig(schema, "operator-terminal calls");
  schema
      .Duration("refusals.flush_interval",
                "how often this replica adds the refusals it counted to refusal_counts "
                "(docs/mtms.md \"Bounded state\"); more than 0")
      .Default("10s");
  schema.Duration("refusals.retention", "how long refusal counts are kept").Default("24h");
  schema
      .Duration("refusals.purge_interval",
                "how often this replica deletes refusal counts "
                "older than refusals.retention (0: never)")
      .Default("1m");
  schema.String("replica_id", "this replica's name in claims and audit (default: host name)")
      .Default("");
  audit::DeclareAuditConfig(schema, "MTMS");

  schema.Enum("log.format", {"text", "json"}, "log line format").Default("text");
  schema
      .Enum("log.level", {"trace", "debug", "info", "warn", "error", "critical", "off"},
            "minimum level logged")
      .Default("info");
  return schema;
}

MtmsCoreOptions CoreOptionsFromConfig(const Config& config) {
  return MtmsCoreOptions{
      .hsm_id = config.GetString("hsm.id"),
      .default_rsa_bits = config.GetEnum("work_key.rsa_bits") == "3072" ? 3072u : 2048u,
      .clock_skew = config.GetDuration("intake.clock_skew"),
      .refusal_retention = config.GetDuration("refusals.retention"),
  };
}

TranslateBatcherOptions TranslateBatcherOptionsFromConfig(const Config& config) {
  return BatcherOptions(config, "hsm.translate_batch", "hsm.translate_calls");
}

KmsSubmitBatcherOptions KmsSubmitBatcherOptionsFromConfig(const Config& config) {
  return BatcherOptions(config, "kms.submit_batch", "kms.submit_calls");
}

ForwarderOptions ForwarderOptionsFromConfig(const Config& config) {
  std::string replica = config.GetString("replica_id");
  return ForwarderOptions{
      .replica_id = replica.empty() ? "mtms@" + HostName() : replica,
      .pk_index = static_cast<uint64_t>(config.GetInt("hsm.pk_index")),
      .mak_index = static_cast<uint64_t>(config.GetInt("hsm.mak_index")),
      .batch_size = static_cast<int>(config.GetInt("forwarder.batch")),
      .workers = static_cast<int>(config.GetInt("forwarder.workers")),
      .finish_batch = static_cast<int>(config.GetInt("forwarder.finish_batch")),
      .finish_calls = static_cast<int>(config.GetInt("forwarder.finish_calls")),
      .interval = config.GetDuration("forwarder.interval"),
      .initial_backoff = config.GetDuration("forwarder.initial_backoff"),
      .max_backoff = config.GetDuration("forwarder.max_backoff"),
      .lease = config.GetDuration("forwarder.lease"),
  };
}

absl::Status CheckMtmsConfig(const Config& config) {
  // Each forwarder worker holds at most one connection at a time (never across an RPC);
  // the rest serve intake, admin calls and the claims. Checked whether or not the
  // background forwarder runs: ForceForward runs passes with the same workers.
  const int64_t pool_size = config.GetInt("db.pool_size");
  const int64_t workers = config.GetInt("forwarder.workers");
  if (pool_size < workers + kPoolReserve) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: db.pool_size: must be at least forwarder.workers + ", kPoolReserve,
                     " = ", workers + kPoolReserve, ", got ", pool_size,
                     " (raise db.pool_size or lower forwarder.workers)"));
  }
  if (config.GetDuration("refusals.flush_interval") <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("config: refusals.flush_interval: must be more than 0");
  }
  return absl::OkStatus();
}

}  // namespace rkl::mtms
