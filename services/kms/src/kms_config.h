#pragma once
// The configuration rkl-kms understands (environment prefix RKL_KMS), declared once so the
// daemon, `rkl-kms --help` and the tests agree. Configuration names files and HSM key
// indexes only; it never holds key material.

#include "kms_core.h"
#include "kms_grpc_service.h"
#include "rkl/audit/service_chain.h"
#include "rkl/common/config.h"
#include "rkl/db/connection_pool.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/revocation.h"
#include "rkl/rpc/server.h"

namespace rkl::kms {

inline constexpr char kKmsEnvPrefix[] = "RKL_KMS";

ConfigSchema MakeKmsConfigSchema();

struct KmsSettings {
  rpc::ServerOptions server;
  db::PoolOptions db;
  std::string owner_dsn;  // db.owner_dsn: empty unless this process migrates
  std::string hsm_target;
  rpc::ChannelOptions hsm_channel;
  absl::Duration hsm_timeout;
  std::string ca_target;  // ca.endpoint: empty = no CA, TR-34 off
  rpc::ChannelOptions ca_channel;
  absl::Duration ca_timeout;
  KmsCoreOptions core;
  TerminalRateLimits terminal_limits;  // limits.*
  absl::Duration shutdown_grace;
  absl::Duration session_purge_interval;  // 0: this replica never purges
  absl::Duration refusal_flush_interval;  // > 0
  size_t tk_wait_max_waiters = 1024;      // authentication.tk_wait_max_waiters
  rpc::ServiceCaCrlOptions crl;           // client-certificate revocation (docs/pki.md)
  audit::AuditSettings audit;             // the audit chain (docs/kms.md, Audit)
  std::string replica_id;                 // names this replica's audit anchors
};

// Reads a loaded Config (validated by the schema) into typed settings; INVALID_ARGUMENT
// naming the key for a value the schema cannot check.
absl::StatusOr<KmsSettings> KmsSettingsFromConfig(const Config& config);

}  // namespace rkl::kms
