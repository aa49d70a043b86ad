-- Each audit record names the request id of the flow it was written for (docs/hsm.md,
-- "Audit"; docs/operations.md, "Request ids"): the x-request-id of the call the HSM served,
-- '' when there was none. The canonical record covers request_id only when it is not empty,
-- so every record written before this column existed keeps its MAC and its chain verifies.
ALTER TABLE hsm_audit_pending ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE hsm_audit ADD COLUMN request_id text NOT NULL DEFAULT '';
