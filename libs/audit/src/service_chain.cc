#include "rkl/audit/service_chain.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "rkl/audit/mac_key.h"
#include "rkl/common/status_macros.h"
#include "spdlog/spdlog.h"

namespace rkl::audit {

ChainSpec ServiceChainSpec(std::string name, int lock_class) {
  return ChainSpec{
      .name = std::move(name),
      .chain_table = "audit",
      .pending_table = "audit_pending",
      .pending_id_sequence = "audit_pending_id_seq",
      .lock_class = lock_class,
      .pending_id_block = 64,
  };
}

void DeclareAuditConfig(ConfigSchema& schema, const std::string& service) {
  schema
      .Path(kAuditMacKeySetting,
            absl::StrCat("file holding the ", service,
                         " audit chain's MAC key: 32 random bytes (or 64 hex digits), mode "
                         "0600, readable by the daemon's user only; every replica gets the "
                         "same file. Its KCV is recorded at first start and checked at every "
                         "later one. Never logged"))
      .Required();
  schema
      .Duration("audit.seal_interval",
                "how often committed audit records are MAC-chained (writes carry a "
                "per-record MAC and never wait for the chain); 0 = only when the chain is "
                "verified or listed, and at shutdown")
      .Default("100ms");
  schema
      .String("audit.anchor_file",
              absl::StrCat("file the audit chain's head is anchored to, outside the ", service,
                           " database (rklctl ", absl::AsciiStrToLower(service),
                           " audit-verify --anchor checks the chain against it); one per "
                           "replica. Keep it where the database's administrators cannot "
                           "write. Empty: no anchors written"))
      .Default("");
  schema
      .Duration("audit.anchor_interval",
                "how often the anchor file is rewritten with the chain's head; records "
                "chained after the last anchor can be removed undetected (0 = only at start "
                "and shutdown)")
      .Default("1m");
}

absl::StatusOr<AuditSettings> AuditSettingsFromConfig(const Config& config) {
  AuditSettings s;
  s.mac_key_file = config.GetPath(kAuditMacKeySetting);
  s.seal_interval = config.GetDuration("audit.seal_interval");
  if (s.seal_interval > absl::Minutes(10)) {
    return absl::InvalidArgumentError(
        "config: audit.seal_interval: must be between 0 and 10m (e.g. 100ms)");
  }
  s.anchor_file = config.GetString("audit.anchor_file");
  s.anchor_interval = config.GetDuration("audit.anchor_interval");
  return s;
}

absl::StatusOr<crypto::SecretBytes> LoadAndBindAuditMacKey(db::ConnectionPool& pool,
                                                           const ChainSpec& spec,
                                                           const AuditSettings& settings) {
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes key, LoadAuditMacKeyFile(settings.mac_key_file));
  RKL_RETURN_IF_ERROR(
      BindAuditMacKey(pool, spec, key, settings.mac_key_file, NowUnixMs(settings.clock)));
  RKL_ASSIGN_OR_RETURN(std::string kcv, AuditMacKeyKcv(key));
  spdlog::info("audit: {} chain MAC key from {} (KCV {})", spec.name, settings.mac_key_file, kcv);
  return key;
}

ServiceAuditChain::ServiceAuditChain(PgAuditLog& log, AuditSettings settings,
                                     std::string instance_id)
    : log_(log), settings_(std::move(settings)) {
  log_.ConfigureAnchors({.instance_id = std::move(instance_id),
                         .file = settings_.anchor_file,
                         .interval = settings_.anchor_interval});
}

void ServiceAuditChain::Start() {
  if (started_) return;
  started_ = true;
  if (!settings_.anchor_file.empty()) {
    // Checks the anchor the last run left before anything new is chained: a chain cut while
    // the daemon was down is reported here (and recorded in the chain), the file kept.
    if (auto anchored = log_.Anchor(); !anchored.ok()) {
      spdlog::error("audit: anchoring at start-up failed: {}", anchored.status().ToString());
    }
  }
  if (settings_.seal_interval > absl::ZeroDuration()) log_.Start(settings_.seal_interval);
}

ServiceAuditChain::~ServiceAuditChain() {
  if (!started_) return;
  // Chain what the last calls wrote; if the database is gone they stay pending, durable,
  // and the next start (of any replica) seals them.
  log_.Stop();
  if (auto sealed = log_.Seal(); !sealed.ok()) {
    spdlog::warn("audit: final seal failed: {}", sealed.status().ToString());
  } else if (!settings_.anchor_file.empty()) {
    if (auto anchored = log_.Anchor(); !anchored.ok()) {
      spdlog::warn("audit: final anchor failed: {}", anchored.status().ToString());
    }
  }
}

}  // namespace rkl::audit
