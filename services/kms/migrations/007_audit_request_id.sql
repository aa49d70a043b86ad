-- Each audit record names the request id of the flow it was written for (docs/hsm.md,
-- "Audit", which defines the record for every chain; docs/operations.md, "Request ids"):
-- '' when there was none. The canonical record covers request_id only when it is not empty,
-- so every record written before this column existed keeps its MAC and the chain verifies.
ALTER TABLE audit_pending ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN request_id text NOT NULL DEFAULT '';
