-- TR-34 terminals and the KDH key (docs/kms.md "TR-34 terminals"). Nothing here is key
-- material: KRD certificates and random numbers are public, the KDH private key is an
-- HSM #2 index, its certificate public.

-- How a terminal loads its TMK. Patent terminals keep their SN-TK_KMS row; a TR-34 terminal
-- has none: it is known by the KRD bound to it (krd_id, tr34::KrdIdOf), whose certificate
-- and the random number of the last key token issued to it (krd_nonce, for the install
-- proof) are kept here. tmk_index/tmk_kcv/tmk_generation hold its TMK as for every terminal.
ALTER TABLE terminals
  ADD COLUMN protocol text NOT NULL DEFAULT 'patent' CHECK (protocol IN ('patent', 'tr34')),
  ADD COLUMN krd_id text CHECK (krd_id ~ '^[0-9A-F]{64}$'),
  ADD COLUMN krd_certificate bytea CHECK (octet_length(krd_certificate) BETWEEN 1 AND 16384),
  ADD COLUMN krd_nonce bytea CHECK (octet_length(krd_nonce) BETWEEN 8 AND 64),
  ADD CONSTRAINT terminals_tr34_krd CHECK (
    (protocol = 'tr34') = (krd_id IS NOT NULL) AND
    (krd_id IS NULL) = (krd_certificate IS NULL) AND
    (protocol = 'tr34' OR krd_nonce IS NULL));
CREATE INDEX terminals_krd_id ON terminals (krd_id) WHERE krd_id IS NOT NULL;
CREATE INDEX terminals_protocol ON terminals (protocol);

-- The KDH signing keys: private key in HSM #2 (key_index), certificate from kdh-ca. At most
-- one is active.
CREATE TABLE kdh_keys (
  key_index        bigint PRIMARY KEY CHECK (key_index > 0),
  label            text NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
  certificate      bytea NOT NULL CHECK (octet_length(certificate) BETWEEN 1 AND 16384),
  serial_hex       text NOT NULL CHECK (serial_hex ~ '^[0-9A-F]{1,64}$'),
  not_after_s      bigint NOT NULL,
  created_at_ms    bigint NOT NULL,
  active           boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX kdh_keys_one_active ON kdh_keys ((true)) WHERE active;
