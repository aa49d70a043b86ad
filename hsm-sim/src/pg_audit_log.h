#pragma once
// The HSM's audit chain in PostgreSQL: rkl::audit::PgAuditLog (libs/audit states its
// guarantees) on the tables hsm_audit and hsm_audit_pending (HsmAuditChain()).

#include "audit_log.h"
#include "rkl/audit/audit_log.h"
#include "rkl/db/connection_pool.h"

namespace rkl::hsm {

// rkl::audit::PgAuditLog on the HSM's tables.
class PgAuditLog : public audit::PgAuditLog {
 public:
  PgAuditLog(db::ConnectionPool& pool, crypto::SecretBytes audit_key)
      : audit::PgAuditLog(pool, std::move(audit_key), HsmAuditChain()) {}
  PgAuditLog(db::ConnectionPool& pool, db::ConnectionPool& writer_pool,
             crypto::SecretBytes audit_key)
      : audit::PgAuditLog(pool, writer_pool, std::move(audit_key), HsmAuditChain()) {}
};

}  // namespace rkl::hsm
