-- Test schema for rkl::db's own tests. Exercises what real migrations use: several
-- statements in one file, constraints, comments and quotes ('it''s').
CREATE TABLE widgets (
  id bigint PRIMARY KEY,
  label text NOT NULL UNIQUE,
  weight integer NOT NULL CHECK (weight > 0)
);
COMMENT ON TABLE widgets IS 'it''s a test table';
