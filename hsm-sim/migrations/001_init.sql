-- rkl-hsm schema: the instance binding (LMK KCV), key records, key ceremonies and the
-- append-only, MAC-chained audit log. No column ever holds clear key material: key bytes
-- and ceremony components exist here only sealed under the LMK (AES-256-GCM, PROTOCOL §9).

-- One row: which HSM instance this database belongs to and the KCV of its LMK. A daemon
-- started with another LMK (or hsm_id) refuses to run.
CREATE TABLE hsm_instance (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  hsm_id text NOT NULL,
  lmk_kcv text NOT NULL,
  created_at_ms bigint NOT NULL
);

-- Key indexes are taken from the sequence before sealing, because the index is part of the
-- AAD that binds the sealed bytes to their record.
CREATE SEQUENCE hsm_key_index_seq AS bigint START 1;

-- Enumerations use the numbers of proto/rkl/v1/hsm.proto (KeyType, KeyUsage, KeyState) and
-- the terminal algorithm wire codes of PROTOCOL §1 (0 = not a terminal key).
CREATE TABLE hsm_key (
  key_index bigint PRIMARY KEY,
  key_type smallint NOT NULL CHECK (key_type BETWEEN 1 AND 6),
  algorithm smallint NOT NULL CHECK (algorithm IN (0, 1, 17, 19)),
  usage smallint NOT NULL CHECK (usage BETWEEN 1 AND 7),
  bound_sn text NOT NULL DEFAULT '',
  label text NOT NULL,
  kcv text NOT NULL DEFAULT '',
  state smallint NOT NULL CHECK (state BETWEEN 1 AND 3),
  created_at_ms bigint NOT NULL,
  updated_at_ms bigint NOT NULL,
  rsa_bits integer NOT NULL DEFAULT 0,
  public_key_der bytea,
  -- AES-256-GCM under the LMK: nonce (12 bytes) and ciphertext ‖ tag. Erased (NULL) when
  -- the key is deleted.
  nonce bytea,
  sealed bytea,
  CHECK (state = 3 OR (nonce IS NOT NULL AND sealed IS NOT NULL))
);
-- One live TEK, AUK and TMK per terminal: two concurrent requests cannot both create one.
CREATE UNIQUE INDEX hsm_key_one_live_per_sn ON hsm_key (key_type, bound_sn)
  WHERE state = 1 AND key_type IN (4, 5, 6);
CREATE UNIQUE INDEX hsm_key_live_label ON hsm_key (label) WHERE state = 1;

-- Key ceremonies (dual control, PROTOCOL / ARCHITECTURE S101). state: 1 open, 2 completed,
-- 3 expired.
CREATE TABLE hsm_ceremony (
  ceremony_id text PRIMARY KEY,
  label text NOT NULL,
  key_type smallint NOT NULL CHECK (key_type IN (2, 3)),
  component_count integer NOT NULL CHECK (component_count BETWEEN 2 AND 9),
  ceremony_key_index bigint NOT NULL REFERENCES hsm_key (key_index),
  state smallint NOT NULL CHECK (state BETWEEN 1 AND 3),
  created_by text NOT NULL,
  created_at_ms bigint NOT NULL,
  expires_at_ms bigint NOT NULL,
  result_key_index bigint REFERENCES hsm_key (key_index)
);
CREATE INDEX hsm_ceremony_open ON hsm_ceremony (expires_at_ms) WHERE state = 1;

-- One component per custodian and ceremony, sealed under the LMK (AAD: ceremony id and
-- custodian). Rows are deleted when the ceremony completes or expires.
CREATE TABLE hsm_ceremony_component (
  ceremony_id text NOT NULL REFERENCES hsm_ceremony (ceremony_id),
  custodian text NOT NULL,
  position integer NOT NULL,
  kcv text NOT NULL,
  nonce bytea NOT NULL,
  sealed bytea NOT NULL,
  added_at_ms bigint NOT NULL,
  PRIMARY KEY (ceremony_id, custodian),
  UNIQUE (ceremony_id, position)
);

-- The audit log. Each row's mac = HMAC-SHA256(audit key, previous mac ‖ canonical record),
-- so an edited, deleted or reordered row breaks the chain from that row on.
CREATE TABLE hsm_audit (
  seq bigint PRIMARY KEY CHECK (seq > 0),
  at_ms bigint NOT NULL,
  actor text NOT NULL,
  action text NOT NULL,
  sn text NOT NULL,
  detail text NOT NULL,
  result text NOT NULL,
  mac bytea NOT NULL
);

-- Append-only for everyone who goes through SQL: an UPDATE, DELETE or TRUNCATE fails. (A
-- superuser can disable the trigger; the MAC chain still shows what they changed.)
CREATE FUNCTION hsm_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'hsm_audit is append-only';
END;
$$;
CREATE TRIGGER hsm_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON hsm_audit
  FOR EACH STATEMENT EXECUTE FUNCTION hsm_audit_refuse_change();
