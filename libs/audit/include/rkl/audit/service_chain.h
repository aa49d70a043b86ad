#pragma once
// The audit chain of a service daemon that keeps its MAC key in a file (KMS, MTMS): the
// audit.* configuration keys, and the start-up and shutdown steps the HSM also takes —
// check the key against the database, check the last anchor, run the sealer; at shutdown,
// chain what is left and anchor it.

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rkl/audit/audit_log.h"
#include "rkl/common/clock.h"
#include "rkl/common/config.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/schema_roles.h"

namespace rkl::audit {

// What the runtime role of a service with a chain (KMS, MTMS) may do with libs/audit's tables
// (docs/operations.md, "Database roles"):
//  - refusal_counts: counters upserted per minute (FlushRefusalCounts), deleted after
//    `refusals.retention`;
//  - audit: the chain, appended to (by the sealer) and read, nothing else;
//  - audit_pending: records wait here to be chained, and the sealer deletes those it has
//    chained. A role that deletes one before it is sealed removes a record no anchor has
//    seen yet: the bound the service's document states (at most audit.seal_interval old);
//  - audit_key: the first start records the MAC key's KCV; never changed;
//  - audit_legacy: the records from before the chain, read only.
inline constexpr db::RuntimeGrant kServiceAuditGrants[] = {
    db::TableGrant("refusal_counts", "SELECT, INSERT, UPDATE, DELETE"),
    db::TableGrant("audit", "SELECT, INSERT"),
    db::TableGrant("audit_pending", "SELECT, INSERT, DELETE"),
    db::SequenceGrant("audit_pending_id_seq", "USAGE"),
    db::TableGrant("audit_key", "SELECT, INSERT"),
    db::TableGrant("audit_legacy", "SELECT"),
};

// The chain of such a service, in the tables above (audit, audit_pending and its id
// sequence): `name` ("kms") is the domain of its MACs and anchors, `lock_class` orders its
// sealers. Its pending ids are fetched a block of 64 at a time.
ChainSpec ServiceChainSpec(std::string name, int lock_class);

struct AuditSettings {
  std::string mac_key_file;
  absl::Duration seal_interval = absl::Milliseconds(100);  // zero: only verify and shutdown
  std::string anchor_file;                                 // empty: no anchors written
  absl::Duration anchor_interval = absl::Minutes(1);
  Clock clock = SystemClock();  // when the MAC key was first bound
};

// audit.mac_key_file (required), audit.seal_interval, audit.anchor_file, audit.anchor_interval;
// `service` ("KMS") names the daemon in the descriptions.
void DeclareAuditConfig(ConfigSchema& schema, const std::string& service);
// INVALID_ARGUMENT naming the key for a value out of range.
absl::StatusOr<AuditSettings> AuditSettingsFromConfig(const Config& config);

// Reads audit.mac_key_file and checks its KCV against the one the chain was begun with
// (recording it at first start); FAILED_PRECONDITION naming the file otherwise.
absl::StatusOr<crypto::SecretBytes> LoadAndBindAuditMacKey(db::ConnectionPool& pool,
                                                           const ChainSpec& spec,
                                                           const AuditSettings& settings);

// Runs the chain of one daemon between Start() and its destructor: anchors (to
// settings.anchor_file, by `instance_id`) at start — which checks the anchor the last run
// left — and every anchor_interval, seals every seal_interval, and at the end seals and
// anchors once more. An anchor refused at start is logged (critical) and audited by the log
// itself; the daemon keeps running.
class ServiceAuditChain {
 public:
  ServiceAuditChain(PgAuditLog& log, AuditSettings settings, std::string instance_id);
  ~ServiceAuditChain();
  void Start();

 private:
  PgAuditLog& log_;
  const AuditSettings settings_;
  bool started_ = false;
};

}  // namespace rkl::audit
