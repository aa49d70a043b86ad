-- Failed proofs back off per SN (docs/kms.md "Lockout"): no proof of this terminal is put
-- to HSM #2 before retry_after_ms (Unix ms). Set, with consecutive_failures, by one atomic
-- UPDATE per attempt before HSM #2 sees the proof; cleared with the counter by a success or
-- an unlock.
ALTER TABLE terminals ADD COLUMN retry_after_ms bigint NOT NULL DEFAULT 0;
