-- TR-34 (docs/hsm.md, "TR-34 key tokens"): HSM #2 holds the KDH signing key (usage 8,
-- KEY_USAGE_KDH_SIGN) and makes TMKs bound to one KRD, the only KRD they are put in a key
-- token for. bound_krd names that KRD (tr34::KrdIdOf: 64 upper-case hex digits) and is part
-- of the record's AAD ("RKL-HSM-KEY-3"), so the binding cannot be changed or removed without
-- the record failing to open. '' = not bound to a KRD: every other key. A TMK is bound to a
-- TEK (kek_index) or to a KRD, never to both.
ALTER TABLE hsm_key DROP CONSTRAINT hsm_key_usage_check;
ALTER TABLE hsm_key ADD CONSTRAINT hsm_key_usage_check CHECK (usage BETWEEN 1 AND 8);
ALTER TABLE hsm_key ADD COLUMN bound_krd text NOT NULL DEFAULT ''
  CHECK (bound_krd = '' OR bound_krd ~ '^[0-9A-F]{64}$');
ALTER TABLE hsm_key ADD CONSTRAINT hsm_key_krd_only_for_tmk
  CHECK (bound_krd = '' OR (key_type = 6 AND kek_index = 0));
