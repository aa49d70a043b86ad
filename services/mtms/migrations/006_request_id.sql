-- Request ids (docs/operations.md, "Request ids"):
--  - each audit record names the request id of the flow it was written for, '' when there
--    was none. The canonical record covers request_id only when it is not empty (docs/hsm.md,
--    "Audit"), so every record written before this column existed keeps its MAC;
--  - each package keeps the request id of the call that submitted it, so that forwarding it
--    to KMS later (through HSM #1) carries the same id; '' for packages received before.
ALTER TABLE audit_pending ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE sn_key_mtms ADD COLUMN request_id text NOT NULL DEFAULT '';
