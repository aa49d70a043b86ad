#pragma once
// What rkl-kms's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-kms --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role KMS runs as cannot change the schema, truncate a table, or update
// or delete an audit record.
//
//  - terminals, sn_tk_kms: rows are created and move through their states; none is ever
//    deleted (a superseding TK replaces its row with an upsert);
//  - auth_sessions: the same, and a session is deleted once it expired longer ago than
//    `session.retention` (KmsCore::PurgeExpiredSessions);
//  - refusal_counts: counters upserted per minute (KmsCore::FlushRefusalCounts), deleted
//    after `refusals.retention`;
//  - audit: the chain, appended to (by the sealer) and read, nothing else;
//  - audit_pending: records wait here to be chained, and the sealer deletes those it has
//    chained. A role that deletes one before it is sealed removes a record no anchor has
//    seen yet: the bound docs/kms.md states (at most audit.seal_interval old);
//  - audit_key: the first start records the MAC key's KCV; never changed;
//  - audit_legacy: the records from before the chain, read only.

#include "rkl/db/schema_roles.h"

namespace rkl::kms {

inline constexpr db::RuntimeGrant kKmsRuntimeGrants[] = {
    db::TableGrant("terminals", "SELECT, INSERT, UPDATE"),
    db::TableGrant("sn_tk_kms", "SELECT, INSERT, UPDATE"),
    db::TableGrant("auth_sessions", "SELECT, INSERT, UPDATE, DELETE"),
    db::TableGrant("refusal_counts", "SELECT, INSERT, UPDATE, DELETE"),
    db::TableGrant("audit", "SELECT, INSERT"),
    db::TableGrant("audit_pending", "SELECT, INSERT, DELETE"),
    db::SequenceGrant("audit_pending_id_seq", "USAGE"),
    db::TableGrant("audit_key", "SELECT, INSERT"),
    db::TableGrant("audit_legacy", "SELECT"),
};

}  // namespace rkl::kms
