#pragma once
// What rkl-mtms's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-mtms --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role MTMS runs as cannot change the schema, truncate a table, or update
// or delete an audit record.
//
//  - work_keys, operators_seen, sn_key_mtms: rows are created and change state (work keys
//    retire, packages are claimed and forwarded); none is ever deleted;
//  - refusal_counts: counters upserted per minute (MtmsCore::FlushRefusalCounts), deleted
//    after `refusals.retention`;
//  - audit: the chain, appended to (by the sealer) and read, nothing else;
//  - audit_pending: records wait here to be chained, and the sealer deletes those it has
//    chained. A role that deletes one before it is sealed removes a record no anchor has
//    seen yet: the bound docs/mtms.md states (at most audit.seal_interval old);
//  - audit_key: the first start records the MAC key's KCV; never changed;
//  - audit_legacy: the records from before the chain, read only.

#include "rkl/db/schema_roles.h"

namespace rkl::mtms {

inline constexpr db::RuntimeGrant kMtmsRuntimeGrants[] = {
    db::TableGrant("work_keys", "SELECT, INSERT, UPDATE"),
    db::TableGrant("operators_seen", "SELECT, INSERT, UPDATE"),
    db::TableGrant("sn_key_mtms", "SELECT, INSERT, UPDATE"),
    db::TableGrant("refusal_counts", "SELECT, INSERT, UPDATE, DELETE"),
    db::TableGrant("audit", "SELECT, INSERT"),
    db::TableGrant("audit_pending", "SELECT, INSERT, DELETE"),
    db::SequenceGrant("audit_pending_id_seq", "USAGE"),
    db::TableGrant("audit_key", "SELECT, INSERT"),
    db::TableGrant("audit_legacy", "SELECT"),
};

}  // namespace rkl::mtms
