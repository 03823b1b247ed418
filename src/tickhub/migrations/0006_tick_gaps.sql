-- Ids the hub issued but PostgreSQL will never hold: ticks dropped while PostgreSQL was unreachable past
-- the writer's backlog, or refused by PostgreSQL (the tick itself is then in rejected_ticks). A resume
-- whose replay from PostgreSQL crosses one gets `resync history_unavailable` instead of a silent jump,
-- after a restart as well as before it.
CREATE TABLE tick_gaps (
    first_id    bigint NOT NULL,
    last_id     bigint NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('dropped', 'rejected')),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (first_id),
    CHECK (first_id <= last_id)
);

-- Ticks PostgreSQL refused to store (a row no validation should have let through), set aside so the
-- rest of their batch is written: the tick's JSON exactly as it was streamed, and PostgreSQL's error.
CREATE TABLE rejected_ticks (
    id          bigint PRIMARY KEY,
    source      text NOT NULL,
    seq         bigint NOT NULL,
    tick        bytea NOT NULL,
    error       text NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
