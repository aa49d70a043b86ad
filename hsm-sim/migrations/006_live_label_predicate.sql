-- The one-live-key-per-label index, rebuilt so that the planner can use it only for lookups
-- that name a label. Its old predicate (state = 1) is implied by every statement that checks
-- keys by index or an SN's live key by type, and a generic plan made while the table was
-- nearly empty (a new HSM's first commands) chose a full scan of it with a filter over the
-- primary key or hsm_key_one_live_per_sn, a plan the connection then kept as the table grew:
-- every command read every live key (docs/hsm.md, "One write per command"). `label IS NOT
-- NULL` is true of every row (the column is NOT NULL), so the index holds the same rows and
-- enforces the same uniqueness, but only a clause on label (label = $1 implies it) lets the
-- planner prove it.
DROP INDEX hsm_key_live_label;
CREATE UNIQUE INDEX hsm_key_live_label ON hsm_key (label) WHERE state = 1 AND label IS NOT NULL;
