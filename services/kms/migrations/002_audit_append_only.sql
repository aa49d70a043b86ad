-- The audit is append-only for every role that goes through SQL, the owner included: an
-- UPDATE, DELETE or TRUNCATE fails. The runtime role holds only SELECT and INSERT on it and
-- owns nothing, so it can neither change a record nor disable this trigger; only the owner
-- or a superuser can (docs/operations.md, "Database roles").
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
