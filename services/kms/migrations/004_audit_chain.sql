-- The audit becomes a MAC chain, as the HSM's (libs/audit; docs/kms.md, "Audit"):
--  - audit_pending: every write puts its records here, in the same statement as the change
--    they describe, each with its own MAC (HMAC-SHA256 under the audit MAC key over
--    "RKL-KMS-AUDIT-PENDING-1" ‖ [id]_8 ‖ the canonical record); id comes from a sequence and
--    is part of the MAC, so a pending record cannot be replayed;
--  - audit: the chain. The sealer (one at a time across replicas: an advisory lock) moves
--    committed pending records here in id order, each with the next seq and
--    mac = HMAC-SHA256(key, previous mac ‖ canonical record), and deletes them from
--    audit_pending, in one transaction;
--  - audit_key: the KCV of the MAC key the chain was begun with; a daemon with another key
--    refuses to start.
-- Records written before this migration have no MAC and cannot be given one here (the key
-- never reaches the database): they stay, unchanged and still append-only, in audit_legacy.
ALTER TABLE audit RENAME TO audit_legacy;
ALTER INDEX audit_pkey RENAME TO audit_legacy_pkey;
ALTER INDEX audit_sn_seq RENAME TO audit_legacy_sn_seq;
ALTER INDEX audit_action RENAME TO audit_legacy_action;
ALTER TRIGGER audit_append_only ON audit_legacy RENAME TO audit_legacy_append_only;

CREATE TABLE audit (
  seq     bigint PRIMARY KEY CHECK (seq > 0),
  at_ms   bigint NOT NULL,
  actor   text NOT NULL,
  action  text NOT NULL,
  sn      text NOT NULL,
  detail  text NOT NULL,
  result  text NOT NULL,
  mac     bytea NOT NULL
);
CREATE INDEX audit_sn_seq ON audit (sn, seq);
CREATE INDEX audit_action ON audit (action);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

CREATE SEQUENCE audit_pending_id_seq AS bigint;
CREATE TABLE audit_pending (
  id      bigint PRIMARY KEY,
  at_ms   bigint NOT NULL,
  actor   text NOT NULL,
  action  text NOT NULL,
  sn      text NOT NULL,
  detail  text NOT NULL,
  result  text NOT NULL,
  mac     bytea NOT NULL
);
CREATE INDEX audit_pending_action ON audit_pending (action);

CREATE TABLE audit_key (
  singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  kcv            text NOT NULL,
  created_at_ms  bigint NOT NULL
);
