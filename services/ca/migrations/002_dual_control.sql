-- Dual control of privileged certificates (docs/pki.md "Custody"). After the bootstrap, the
-- CA signs a service, admin, custodian or operator certificate only for a request that one
-- admin made and a second, distinct admin approved. Both steps, and every refusal, are
-- written to ca_audit in the same transaction as the change they record.

CREATE TABLE ca_certificate_requests (
  -- Upper-case hex of 16 random bytes.
  id             text        PRIMARY KEY CHECK (id ~ '^[0-9A-F]{32}$'),
  profile        text        NOT NULL CHECK (profile IN ('service', 'operator')),
  -- The identity the certificate will name: a service, admin:<name>, custodian:<name> or
  -- operator:<id>.
  subject        text        NOT NULL,
  csr_pem        text        NOT NULL,
  dns_names      text        NOT NULL DEFAULT '',  -- comma-separated extra SANs ([a-z0-9.-])
  validity_days  integer     NOT NULL CHECK (validity_days >= 0),
  requested_by   text        NOT NULL,
  requested_at   bigint      NOT NULL,
  expires_at     bigint      NOT NULL CHECK (expires_at > requested_at),
  state          text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'issued')),
  approved_by    text,
  approved_at    bigint,
  serial_hex     text        REFERENCES ca_certificates (serial_hex),
  -- The rule itself, where no code path can skip it: nobody approves their own request.
  CHECK (approved_by IS NULL OR approved_by <> requested_by),
  CHECK ((state = 'issued') =
         (approved_by IS NOT NULL AND approved_at IS NOT NULL AND serial_hex IS NOT NULL))
);
CREATE INDEX ca_certificate_requests_pending ON ca_certificate_requests (requested_at)
  WHERE state = 'pending';

-- Append-only record of the custody steps: requests, approvals, refusals, revocations.
CREATE TABLE ca_audit (
  seq         bigserial   PRIMARY KEY,
  at          bigint      NOT NULL,  -- unix seconds, from the CA's clock
  actor       text        NOT NULL,  -- the caller's mTLS identity ("(no identity)" if none)
  action      text        NOT NULL,
  request_id  text,
  subject     text,
  serial_hex  text,
  result      text        NOT NULL,  -- "OK" or "<CODE>: <message>"
  detail      text        NOT NULL DEFAULT ''
);
CREATE INDEX ca_audit_request ON ca_audit (request_id) WHERE request_id IS NOT NULL;
