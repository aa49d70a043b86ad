-- Audit records are written in two steps, so that HSM commands never queue behind one lock
-- held across a disk sync (docs/performance.md):
--  1. a command writes its record here, in its own transaction, with a per-record MAC
--     (HMAC-SHA256 under the audit key over "RKL-HSM-AUDIT-PENDING-1" ‖ [id]_8 ‖ the
--     canonical record), and commits concurrently with every other command;
--  2. the sealer (one at a time across replicas: an advisory lock) moves committed pending
--     records, in id order, into the MAC-chained hsm_audit and deletes them here, in one
--     transaction. A pending record whose MAC does not verify is not chained as if it were
--     genuine: a record saying so takes its place.
-- id comes from a sequence and is part of the MAC, so a pending record cannot be replayed.
CREATE TABLE hsm_audit_pending (
  id bigserial PRIMARY KEY,
  at_ms bigint NOT NULL,
  actor text NOT NULL,
  action text NOT NULL,
  sn text NOT NULL,
  detail text NOT NULL,
  result text NOT NULL,
  mac bytea NOT NULL
);
