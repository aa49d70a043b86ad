-- TR-34 (docs/tr34.md): the issuer kdh-ca and the KDH certificates it signs (profile 'kdh').
-- A CA bootstrapped before this migration has no kdh-ca row; `rklctl pki add-issuer kdh-ca`
-- adds it.

ALTER TABLE ca_issuers
  DROP CONSTRAINT ca_issuers_name_check,
  ADD CONSTRAINT ca_issuers_name_check
    CHECK (name IN ('terminal-root', 'operator-ca', 'service-ca', 'kdh-ca'));

ALTER TABLE ca_certificates
  DROP CONSTRAINT ca_certificates_profile_check,
  ADD CONSTRAINT ca_certificates_profile_check
    CHECK (profile IN ('issuer', 'work', 'operator', 'service', 'kdh'));
