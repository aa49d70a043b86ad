#pragma once
// What rkl-mtms's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-mtms --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role MTMS runs as cannot change the schema, truncate a table, or update
// or delete an audit record.
//
//  - work_keys, operators_seen, sn_key_mtms: rows are created and change state (work keys
//    retire, packages are claimed and forwarded); none is ever deleted;
//  - the audit chain's tables and refusal_counts: audit::kServiceAuditGrants.

#include "rkl/audit/service_chain.h"
#include "rkl/db/schema_roles.h"

namespace rkl::mtms {

inline constexpr auto kMtmsRuntimeGrants = db::JoinGrants(
    {
        db::TableGrant("work_keys", "SELECT, INSERT, UPDATE"),
        db::TableGrant("operators_seen", "SELECT, INSERT, UPDATE"),
        db::TableGrant("sn_key_mtms", "SELECT, INSERT, UPDATE"),
    },
    audit::kServiceAuditGrants);

}  // namespace rkl::mtms
