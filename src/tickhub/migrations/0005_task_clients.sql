-- Who submitted each task ('account:<id>' for an API key, else 'address:<ip>'), so one client's
-- open tasks can be bounded. Tasks from before this column have none and count against nobody.
ALTER TABLE tasks ADD COLUMN client text;
CREATE INDEX tasks_open_client ON tasks (client) INCLUDE (timeout) WHERE state <> 'done';
