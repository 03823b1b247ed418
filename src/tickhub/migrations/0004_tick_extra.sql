-- Fields a tick carries beyond the common six, as the JSON object whose keys follow "seq" in the
-- tick's JSON: a composite's contributing venues. NULL for ordinary ticks. A nullable column with
-- no default is added without rewriting the table.
ALTER TABLE ticks ADD COLUMN extra jsonb;
ALTER TABLE latest_ticks ADD COLUMN extra jsonb;
