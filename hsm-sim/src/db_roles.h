#pragma once
// What rkl-hsm's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-hsm --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else, so the role the daemon runs as cannot change the schema, disable the
// audit's append-only trigger, or update, delete or truncate a chained audit record.
//
// Why each line is what it is:
//  - hsm_instance: the first start records the LMK's KCV; the row is never changed;
//  - hsm_key, hsm_ceremony: keys and ceremonies change state but are never deleted (a
//    deleted key is a row whose sealed bytes are erased);
//  - hsm_ceremony_component: components are deleted when their ceremony ends;
//  - hsm_audit: the chain is only appended to and read;
//  - hsm_audit_pending: the sealer deletes the records it has moved into the chain. A role
//    that deletes one before it is sealed removes a record no anchor has seen yet; that is
//    the bound docs/hsm.md states (at most audit.seal_interval old).

#include "rkl/db/schema_roles.h"

namespace rkl::hsm {

inline constexpr db::RuntimeGrant kHsmRuntimeGrants[] = {
    db::TableGrant("hsm_instance", "SELECT, INSERT"),
    db::TableGrant("hsm_key", "SELECT, INSERT, UPDATE"),
    db::SequenceGrant("hsm_key_index_seq", "USAGE"),
    db::TableGrant("hsm_ceremony", "SELECT, INSERT, UPDATE"),
    db::TableGrant("hsm_ceremony_component", "SELECT, INSERT, DELETE"),
    db::TableGrant("hsm_audit", "SELECT, INSERT"),
    db::TableGrant("hsm_audit_pending", "SELECT, INSERT, DELETE"),
    db::SequenceGrant("hsm_audit_pending_id_seq", "USAGE"),
};

}  // namespace rkl::hsm
