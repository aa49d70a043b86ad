-- operators_seen no longer counts packages: `packages = packages + 1` on every accepted
-- submission made the operator's row a hot spot that serialised all of its submissions
-- (docs/performance.md). The row is now written on an operator certificate's first package
-- and when last_seen_at_ms is a minute old; the number of packages is counted from
-- sn_key_mtms (operator_id, operator_certificate_serial) when it is wanted.
ALTER TABLE operators_seen DROP COLUMN packages;
