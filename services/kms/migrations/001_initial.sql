-- rkl-kms schema (PROTOCOL §6–§8). No column ever holds clear key material: Ctk_pk is
-- wrapped under PK, TEK/AUK/TMK are HSM #2 key indexes, KCVs are public check values.

-- One row per terminal: its life cycle (docs/kms.md) and its TMK.
CREATE TABLE terminals (
  sn                   text PRIMARY KEY CHECK (sn ~ '^[A-Z0-9-]{1,32}$'),
  state                text NOT NULL CHECK (state IN ('TK_RECEIVED', 'AUTHENTICATED',
                         'TMK_DELIVERED', 'INSTALLED', 'LOCKED', 'REVOKED', 'REKEY_PENDING')),
  -- The state to return to when an admin unlocks a LOCKED terminal.
  state_before_lock    text CHECK (state_before_lock IN ('TK_RECEIVED', 'AUTHENTICATED',
                         'TMK_DELIVERED', 'INSTALLED', 'REKEY_PENDING')),
  algorithm            smallint NOT NULL CHECK (algorithm IN (1, 17, 19)),
  -- HSM #2 index of this terminal's live TMK. UNIQUE: no two terminals ever share a TMK
  -- (HSM #2 additionally keeps at most one live TMK per SN).
  tmk_index            bigint UNIQUE CHECK (tmk_index > 0),
  tmk_kcv              text CHECK (tmk_kcv ~ '^[0-9A-F]{6}$'),
  tmk_generation       integer NOT NULL DEFAULT 0 CHECK (tmk_generation >= 0),
  -- The next GenerateTmk must supersede the live TMK (re-key, or a TMK that was exported
  -- under a TEK that has since been superseded).
  replace_tmk          boolean NOT NULL DEFAULT false,
  rekey_requested      boolean NOT NULL DEFAULT false,
  consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
  created_at_ms        bigint NOT NULL,
  installed_at_ms      bigint NOT NULL DEFAULT 0,
  updated_at_ms        bigint NOT NULL,
  -- Optimistic concurrency: every update names the version it read.
  version              bigint NOT NULL DEFAULT 1,
  CHECK ((tmk_index IS NULL) = (tmk_kcv IS NULL)),
  CHECK ((state = 'LOCKED') = (state_before_lock IS NOT NULL))
);
CREATE INDEX terminals_state_sn ON terminals (state, sn);

-- SN-TK_KMS: the current transport key of each terminal as MTMS delivered it (S107–S108),
-- and the HSM #2 indexes of TEK and AUK once imported (S109–S111). A superseding TK
-- replaces the row; the audit keeps the history (SHA-256 of each Ctk_pk).
CREATE TABLE sn_tk_kms (
  sn                  text PRIMARY KEY REFERENCES terminals (sn),
  ctk_pk              bytea NOT NULL CHECK (octet_length(ctk_pk) BETWEEN 1 AND 512),
  mtms_submission_id  text NOT NULL DEFAULT '',
  received_at_ms      bigint NOT NULL,
  algorithm           smallint NOT NULL CHECK (algorithm IN (1, 17, 19)),
  tek_index           bigint UNIQUE CHECK (tek_index > 0),
  tek_kcv             text CHECK (tek_kcv ~ '^[0-9A-F]{6}$'),
  auk_index           bigint UNIQUE CHECK (auk_index > 0),
  auk_kcv             text CHECK (auk_kcv ~ '^[0-9A-F]{6}$'),
  imported_at_ms      bigint NOT NULL DEFAULT 0,
  CHECK ((tek_index IS NULL) = (auk_index IS NULL))
);

-- Authentication sessions (PROTOCOL §7), shared by every KMS replica. Single use: each
-- step moves the state forward with a compare-and-set, so two replicas can never both
-- proceed with one session.
CREATE TABLE auth_sessions (
  id             text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
  sn             text NOT NULL REFERENCES terminals (sn),
  auk_index      bigint NOT NULL,
  rnd1           bytea NOT NULL,
  rnd2           bytea NOT NULL,
  state          text NOT NULL CHECK (state IN ('OPEN', 'VERIFYING', 'AUTHENTICATED',
                   'CONFIRMING', 'CONFIRMED', 'FAILED', 'CANCELLED')),
  tmk_kcv        text NOT NULL DEFAULT '',
  created_at_ms  bigint NOT NULL,
  expires_at_ms  bigint NOT NULL
);
CREATE INDEX auth_sessions_sn ON auth_sessions (sn) WHERE state IN ('OPEN', 'AUTHENTICATED');

-- Append-only audit of every state change and every failure: who, SN, what, KCVs and
-- indexes — never keys.
CREATE TABLE audit (
  seq     bigserial PRIMARY KEY,
  at_ms   bigint NOT NULL,
  actor   text NOT NULL,
  action  text NOT NULL,
  sn      text NOT NULL DEFAULT '',
  detail  text NOT NULL DEFAULT '',
  result  text NOT NULL
);
CREATE INDEX audit_sn_seq ON audit (sn, seq);
CREATE INDEX audit_action ON audit (action);
