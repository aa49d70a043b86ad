#pragma once
// What rkl-kms's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-kms --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role KMS runs as cannot change the schema, truncate a table, or update
// or delete an audit record.
//
//  - terminals, sn_tk_kms: rows are created and move through their states; none is ever
//    deleted (a superseding TK replaces its row with an upsert);
//  - kdh_keys: a provisioned KDH key is inserted, never changed or deleted;
//  - auth_sessions: the same, and a session is deleted once it expired longer ago than
//    `session.retention` (KmsCore::PurgeExpiredSessions);
//  - the audit chain's tables and refusal_counts: audit::kServiceAuditGrants.

#include "rkl/audit/service_chain.h"
#include "rkl/db/schema_roles.h"

namespace rkl::kms {

inline constexpr auto kKmsRuntimeGrants = db::JoinGrants(
    {
        db::TableGrant("terminals", "SELECT, INSERT, UPDATE"),
        db::TableGrant("sn_tk_kms", "SELECT, INSERT, UPDATE"),
        db::TableGrant("auth_sessions", "SELECT, INSERT, UPDATE, DELETE"),
        db::TableGrant("kdh_keys", "SELECT, INSERT"),
    },
    audit::kServiceAuditGrants);

}  // namespace rkl::kms
