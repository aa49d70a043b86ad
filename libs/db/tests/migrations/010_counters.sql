-- Version 10 after 2: versions need only increase, not be contiguous.
CREATE TABLE counters (
  name text PRIMARY KEY,
  value bigint NOT NULL
);
INSERT INTO counters (name, value) VALUES ('hits', 0);
