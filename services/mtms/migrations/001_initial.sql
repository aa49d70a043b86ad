-- rkl-mtms schema (docs/mtms.md). Times are Unix milliseconds from the service's clock, so
-- every comparison the forwarder makes uses one time source. Nothing here is key material:
-- public keys, certificates, signatures and ciphertexts only.

-- Work key pairs (S201–S203): Pr lives in HSM #1 at hsm_key_index; Pu and HsmWCRT here.
CREATE TABLE work_keys (
  serial_hex        text PRIMARY KEY CHECK (serial_hex ~ '^[0-9A-F]{1,40}$'),
  hsm_id            text NOT NULL,
  hsm_key_index     bigint NOT NULL CHECK (hsm_key_index >= 0),
  public_key_der    bytea NOT NULL,
  certificate_pem   text NOT NULL,
  terminal_root_pem text NOT NULL,
  state             text NOT NULL CHECK (state IN ('CURRENT', 'PREVIOUS', 'RETIRED')),
  created_at_ms     bigint NOT NULL,
  retired_at_ms     bigint,
  UNIQUE (hsm_id, hsm_key_index)
);
-- At most one CURRENT work key.
CREATE UNIQUE INDEX work_keys_one_current ON work_keys ((true)) WHERE state = 'CURRENT';

-- Operators seen: one row per operator certificate that signed an accepted package.
CREATE TABLE operators_seen (
  operator_id         text NOT NULL,
  certificate_serial  text NOT NULL,
  first_seen_at_ms    bigint NOT NULL,
  last_seen_at_ms     bigint NOT NULL,
  packages            bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (operator_id, certificate_serial)
);

-- Table SN-Key_MTMS (S105): the operator-signed packages and their forwarding outbox.
CREATE TABLE sn_key_mtms (
  submission_id               text PRIMARY KEY,
  sn                          text NOT NULL CHECK (sn ~ '^[A-Z0-9-]{1,32}$'),
  operator_id                 text NOT NULL,
  nonce                       bytea NOT NULL CHECK (octet_length(nonce) = 16),
  package                     bytea NOT NULL,   -- B, byte-exact
  signature                   bytea NOT NULL,   -- DER ECDSA over B, byte-exact
  operator_certificate_pem    text NOT NULL,    -- byte-exact
  operator_certificate_serial text NOT NULL,
  work_certificate_serial     text NOT NULL REFERENCES work_keys (serial_hex),
  ctk_pu                      bytea NOT NULL,
  algorithm_code              smallint NOT NULL,
  created_at_ms               bigint NOT NULL,  -- from the package
  received_at_ms              bigint NOT NULL,
  state                       text NOT NULL
                              CHECK (state IN ('RECEIVED', 'FORWARDED', 'REJECTED')),
  reason                      text NOT NULL DEFAULT '',
  attempts                    integer NOT NULL DEFAULT 0,
  next_attempt_at_ms          bigint NOT NULL,
  last_error                  text NOT NULL DEFAULT '',
  claimed_by                  text,             -- claim token of the forwarder holding it
  claimed_until_ms            bigint,           -- lease end
  forwarded_at_ms             bigint,
  -- Replay protection (PROTOCOL §4): survives restarts because it is the database's.
  CONSTRAINT sn_key_mtms_operator_nonce_key UNIQUE (operator_id, nonce),
  CHECK ((state = 'FORWARDED') = (forwarded_at_ms IS NOT NULL)),
  CHECK (state <> 'REJECTED' OR reason <> '')
);
CREATE INDEX sn_key_mtms_due ON sn_key_mtms (next_attempt_at_ms, received_at_ms)
  WHERE state = 'RECEIVED';
CREATE INDEX sn_key_mtms_by_received ON sn_key_mtms (received_at_ms, submission_id);
CREATE INDEX sn_key_mtms_by_sn ON sn_key_mtms (sn);

-- Audit: who did what; never key material.
CREATE TABLE audit (
  seq     bigserial PRIMARY KEY,
  at_ms   bigint NOT NULL,
  actor   text NOT NULL,
  action  text NOT NULL,
  sn      text NOT NULL DEFAULT '',
  detail  text NOT NULL DEFAULT '',
  result  text NOT NULL
);
