#pragma once
// What rkl-ca's runtime database role may do (docs/operations.md, "Database roles"). The
// migration step (`rkl-ca --migrate-only`, as db.owner_dsn) grants exactly this and revokes
// anything else: the role the CA runs as cannot change the schema, truncate a table, replace
// or remove an issuer, or delete or rewrite a certificate it issued.
//
//  - ca_master_key, ca_issuers: written by the bootstrap (`rklctl pki init` runs it as the
//    owner; the tests run it as this role), and ca_issuers by `rklctl pki add-issuer` for an
//    issuer a CA bootstrapped before it existed lacks (kdh-ca). One master key row and four
//    issuer names are all the schema allows, so INSERT can add nothing else. Never updated;
//  - ca_certificates: issued, then possibly revoked: only the revocation columns can change,
//    never the certificate, its subject or its validity, and no row is ever deleted;
//  - ca_crls: one row per issuer, re-signed in place;
//  - ca_certificate_requests (dual control): requested, then issued once: only the approval
//    columns can change, never the request, its subject or its requester;
//  - ca_audit: append-only.

#include "rkl/db/schema_roles.h"

namespace rkl::ca {

inline constexpr db::RuntimeGrant kCaRuntimeGrants[] = {
    db::TableGrant("ca_master_key", "SELECT, INSERT"),
    db::TableGrant("ca_issuers", "SELECT, INSERT"),
    db::TableGrant("ca_certificates", "SELECT, INSERT", "state, revoked_at, revocation_reason"),
    db::TableGrant("ca_crls", "SELECT, INSERT, UPDATE"),
    db::TableGrant("ca_certificate_requests", "SELECT, INSERT",
                   "state, approved_by, approved_at, serial_hex"),
    db::TableGrant("ca_audit", "SELECT, INSERT"),
    db::SequenceGrant("ca_audit_seq_seq", "USAGE"),
};

}  // namespace rkl::ca
