-- The sequential task queue: one worker runs open tasks in id (= arrival) order.
CREATE TABLE tasks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    num         bigint NOT NULL,
    timeout     double precision NOT NULL CHECK (timeout >= 0),
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at  timestamptz,
    finished_at timestamptz,
    attempts    integer NOT NULL DEFAULT 0
);
CREATE INDEX tasks_open ON tasks (id) WHERE state <> 'done';
CREATE INDEX tasks_done ON tasks (finished_at, id) WHERE state = 'done';
