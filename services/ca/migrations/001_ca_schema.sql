-- rkl-ca schema. Only public data and sealed issuer keys live here: issuer private keys are
-- AES-256-GCM blobs under the CA master key, which is never stored (only its KCV is).

-- The master key the issuers are sealed under, identified by its KCV. One row, ever: its
-- presence is what "initialised" means, so a second bootstrap fails on the primary key.
CREATE TABLE ca_master_key (
  id          smallint    PRIMARY KEY CHECK (id = 1),
  kcv         text        NOT NULL CHECK (kcv ~ '^[0-9A-F]{6}$'),
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ca_issuers (
  name                text        PRIMARY KEY
                                  CHECK (name IN ('terminal-root', 'operator-ca', 'service-ca')),
  certificate_der     bytea       NOT NULL,
  -- nonce(12) ‖ ciphertext ‖ tag(16); AAD = name ‖ SHA-256(certificate_der).
  sealed_private_key  bytea       NOT NULL CHECK (length(sealed_private_key) > 28),
  key_type            text        NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now()
);

-- Every certificate the CA signed, issuer certificates included.
CREATE TABLE ca_certificates (
  -- Upper-case hex of the serial's magnitude. Serials are random; this key is what makes
  -- them unique across all three issuers.
  serial_hex         text        PRIMARY KEY CHECK (serial_hex ~ '^[0-9A-F]{2,40}$'),
  issuer             text        NOT NULL REFERENCES ca_issuers (name),
  profile            text        NOT NULL CHECK (profile IN ('issuer', 'work', 'operator', 'service')),
  subject_cn         text        NOT NULL,
  not_before         bigint      NOT NULL,
  not_after          bigint      NOT NULL CHECK (not_after > not_before),
  certificate_der    bytea       NOT NULL,
  state              text        NOT NULL DEFAULT 'good' CHECK (state IN ('good', 'revoked')),
  revoked_at         bigint,
  revocation_reason  smallint,
  issued_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((state = 'revoked') = (revoked_at IS NOT NULL AND revocation_reason IS NOT NULL))
);
CREATE INDEX ca_certificates_revoked ON ca_certificates (issuer) WHERE state = 'revoked';
CREATE INDEX ca_certificates_subject ON ca_certificates (subject_cn);

-- The CRL currently published by each issuer. Revocations and refreshes lock this row, so
-- crl_number strictly increases.
CREATE TABLE ca_crls (
  issuer       text   PRIMARY KEY REFERENCES ca_issuers (name),
  crl_number   bigint NOT NULL CHECK (crl_number > 0),
  this_update  bigint NOT NULL,
  next_update  bigint NOT NULL CHECK (next_update > this_update),
  crl_der      bytea  NOT NULL
);
