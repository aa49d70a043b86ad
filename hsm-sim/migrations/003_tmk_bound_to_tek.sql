-- A TMK is bound to the TEK it is delivered under (docs/hsm.md, "TMK and TEK"): kek_index
-- names that TEK, and is part of the record's AAD (a bound record cannot be re-bound or
-- unbound without failing to open). 0 = not bound: every other key, and TMKs made before
-- this migration, which are never exported (they must be re-keyed).
ALTER TABLE hsm_key ADD COLUMN kek_index bigint NOT NULL DEFAULT 0 CHECK (kek_index >= 0);
ALTER TABLE hsm_key ADD CONSTRAINT hsm_key_kek_only_for_tmk CHECK (kek_index = 0 OR key_type = 6);

-- Revocation destroys every key of a terminal, live or superseded (DestroyTerminalKeys):
-- an index lookup by SN over the keys not yet erased.
CREATE INDEX hsm_key_by_sn ON hsm_key (bound_sn) WHERE bound_sn <> '' AND state <> 3;
