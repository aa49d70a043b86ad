#pragma once
// HsmDaemon: one running rkl-hsm instance — LMK, database, self-tests, core, gRPC server —
// wired in the order that makes start-up failures clear. main() and the integration tests
// both start the HSM through it, so the tests exercise the daemon's real start-up path.
//
// Start() fails (FAILED_PRECONDITION / UNAVAILABLE, naming the file, key or KCV at fault)
// when the LMK file is unsafe or malformed, the database is unreachable, the schema is not
// the binary's (migrations run as the owner role: MigrateOnly, or owner_dsn at start-up,
// docs/operations.md), or the LMK or hsm_id differs from the one the database was created
// with, or no role is set, or role mtms has no readable operator-ca certificate to trust. A
// failed self-test does NOT fail start-up: the daemon serves, reports NOT_SERVING on gRPC
// health and refuses every cryptographic command with FAILED_PRECONDITION, so an operator can
// see the state and read the audit log.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "hsm_core.h"
#include "hsm_grpc_service.h"
#include "key_barrier.h"
#include "pg_audit_log.h"
#include "pg_key_record_store.h"
#include "rkl/common/config.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/statement_timeouts.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/server.h"
#include "self_test.h"

namespace rkl::hsm {

inline constexpr char kHsmServiceName[] = "rkl.v1.Hsm";

struct HsmDaemonOptions {
  std::string hsm_id = "hsm";
  // HSM #1 (kMtms) or HSM #2 (kKms): which commands it serves (HsmGrpcService). Required.
  std::optional<HsmRole> role;
  // Role mtms: PEM file with the operator-ca certificate(s) whose operators' packages this
  // HSM translates (OperatorEvidence). Required for role mtms, ignored for role kms.
  std::string operator_ca_file;
  // TR-34 (role kms): PEM files with the KRD CA certificates whose KRDs this HSM builds key
  // tokens for (HsmCoreOptions::krd_cas). None: the TR-34 commands are FAILED_PRECONDITION.
  std::vector<std::string> krd_ca_files;
  std::string database_dsn;  // the runtime role
  // The owner role: when set, Start() migrates with it first (then closes it).
  std::string owner_dsn;
  int db_pool_size = 8;
  // db.statement_timeout / db.lock_timeout; none unless set (tests start daemons without).
  db::StatementTimeouts db_timeouts{.statement = absl::ZeroDuration(),
                                    .lock = absl::ZeroDuration()};
  std::string lmk_file;
  std::vector<std::string> operational_identities;
  std::string listen_address = "0.0.0.0:50052";
  rpc::TlsFiles tls;
  // host:port of the Prometheus /metrics endpoint (metrics.listen); empty: none.
  std::string metrics_listen;
  absl::Duration ceremony_ttl = absl::Minutes(15);
  size_t key_cache_size = 256;
  // How often committed audit records are sealed into the chain; zero = only on demand
  // (VerifyAuditChain, shutdown).
  absl::Duration audit_seal_interval = absl::Milliseconds(100);
  // Where and how often the audit chain's head is anchored (PgAuditLog::AnchorOptions);
  // the clock below decides when an anchor is due. Empty file: no anchors written.
  std::string anchor_file;
  absl::Duration anchor_interval = absl::Minutes(1);
  // Test-only: make one self-test answer wrong, to exercise the failure path.
  bool fail_self_test = false;
  // Tests inject a clock they control (ceremony expiry); empty means SystemClock().
  Clock clock;
  // Tests inject randomness; empty means the CSPRNG.
  crypto::RandomSource rng;
  // Client-certificate revocation (docs/pki.md "Revocation"): the service-ca CRL fetched from
  // rkl-ca and enforced on every call. The daemon's config requires it; tests that start an
  // HSM without a CA leave it unset.
  std::optional<rpc::ServiceCaCrlOptions> crl;
};

// The configuration keys of rkl-hsm (RKL_HSM_* environment overrides).
void DeclareHsmConfig(ConfigSchema& schema);
// Reads them; INVALID_ARGUMENT naming the key for values the schema cannot check.
absl::StatusOr<HsmDaemonOptions> HsmOptionsFromConfig(const Config& config);

class HsmDaemon {
 public:
  static absl::StatusOr<std::unique_ptr<HsmDaemon>> Start(HsmDaemonOptions options);
  // `rkl-hsm --migrate-only`: applies the migrations as owner_dsn's role and grants
  // database_dsn's role its privileges (db_roles.h); serves nothing.
  static absl::Status MigrateOnly(const std::string& database_dsn, const std::string& owner_dsn);
  ~HsmDaemon();

  int port() const { return server_->port(); }
  rpc::Server& server() { return *server_; }
  HsmCore& core() { return *core_; }
  PgKeyRecordStore& key_records() { return *records_; }
  KeyBarrier& key_barrier() { return *barrier_; }
  PgAuditLog& audit_log() { return *audit_; }
  const SelfTestResult& self_test() const { return self_test_; }
  const std::string& lmk_kcv() const { return lmk_kcv_; }
  metrics::Metrics& metrics() { return *metrics_; }
  // The /metrics endpoint's port; 0 without metrics_listen.
  int metrics_port() const { return metrics_endpoint_ ? metrics_endpoint_->port() : 0; }

 private:
  HsmDaemon() = default;

  // First, so that everything that registered metrics is gone before them.
  std::unique_ptr<metrics::Metrics> metrics_ = std::make_unique<metrics::Metrics>();
  SelfTestResult self_test_;
  std::string lmk_kcv_;
  std::unique_ptr<db::ConnectionPool> pool_;
  std::unique_ptr<db::ConnectionPool> audit_pool_;  // audit group writes and sealing
  std::unique_ptr<PgAuditLog> audit_;
  bool anchors_ = false;  // an anchor file is configured
  std::unique_ptr<PgKeyRecordStore> records_;
  std::unique_ptr<KeyBarrier> barrier_;
  std::unique_ptr<HsmCore> core_;
  std::unique_ptr<HsmGrpcService> service_;
  std::unique_ptr<rpc::ServiceCaCrl> crl_;  // outlives server_, which checks calls against it
  std::unique_ptr<rpc::Server> server_;
  // Last, so that no scrape runs while what it reads is being destroyed.
  std::unique_ptr<metrics::Endpoint> metrics_endpoint_;
};

}  // namespace rkl::hsm
