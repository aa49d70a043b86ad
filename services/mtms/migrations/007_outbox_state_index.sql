-- The outbox by state, for the metrics read at every scrape (docs/mtms.md, "Metrics"):
-- `SELECT state, count(*), min(received_at_ms) ... GROUP BY state` reads this narrow index
-- (an index-only scan) instead of every row with its package and certificate.
CREATE INDEX sn_key_mtms_by_state ON sn_key_mtms (state, received_at_ms);
