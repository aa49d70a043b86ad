#pragma once
// What rkl-kms's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-kms --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role KMS runs as cannot change the schema, truncate a table, or update
// or delete an audit record.
//
//  - terminals, sn_tk_kms, auth_sessions: rows are created and move through their states;
//    none is ever deleted (a superseding TK replaces its row with an upsert);
//  - audit: appended to and read, nothing else.

#include "rkl/db/schema_roles.h"

namespace rkl::kms {

inline constexpr db::RuntimeGrant kKmsRuntimeGrants[] = {
    db::TableGrant("terminals", "SELECT, INSERT, UPDATE"),
    db::TableGrant("sn_tk_kms", "SELECT, INSERT, UPDATE"),
    db::TableGrant("auth_sessions", "SELECT, INSERT, UPDATE"),
    db::TableGrant("audit", "SELECT, INSERT"),
    db::SequenceGrant("audit_seq_seq", "USAGE"),
};

}  // namespace rkl::kms
