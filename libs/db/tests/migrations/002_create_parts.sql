CREATE TABLE parts (
  id bigserial PRIMARY KEY,
  widget_id bigint NOT NULL REFERENCES widgets (id),
  note text
);
CREATE INDEX parts_widget_id ON parts (widget_id);
