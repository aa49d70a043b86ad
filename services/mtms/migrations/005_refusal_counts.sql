-- Refusals of the public RPCs (SubmitTransportKey, GetOwnSubmission) are counted here per
-- minute instead of each being appended to the audit (docs/mtms.md, "Bounded state";
-- rkl::audit::RefusalTally, as in KMS). `sn` is the package's SN once the operator's
-- signature verified, else '*'; `source` is the caller's address; at most 1,024 distinct
-- (sn, source, action, reason) per minute, later ones counted under sn = source = '*';
-- `action` and `reason` (a status code name) come from short fixed lists. Rows older than
-- `refusals.retention` are deleted by the purge.
CREATE TABLE refusal_counts (
  interval_start_ms  bigint NOT NULL,
  sn                 text NOT NULL CHECK (sn = '*' OR sn ~ '^[A-Z0-9-]{1,32}$'),
  source             text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
  action             text NOT NULL CHECK (length(action) <= 32),
  reason             text NOT NULL CHECK (length(reason) <= 32),
  count              bigint NOT NULL CHECK (count > 0),
  -- the message of the latest refusal counted in this row, for whoever investigates
  last_detail        text NOT NULL DEFAULT '' CHECK (length(last_detail) <= 256),
  PRIMARY KEY (interval_start_ms, sn, source, action, reason)
);
