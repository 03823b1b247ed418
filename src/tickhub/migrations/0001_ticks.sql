-- One row per hub start: hub ids are run * 10^12 + n, so ids keep increasing across restarts
-- and crashes, including ids sent to subscribers but never persisted.
CREATE TABLE hub_runs (
    run        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    host       text NOT NULL DEFAULT ''
);

-- Every tick the hub accepted, in hub order. (source, seq) makes writes idempotent.
CREATE TABLE ticks (
    id     bigint PRIMARY KEY,
    source text NOT NULL,
    symbol text NOT NULL,
    price  numeric NOT NULL CHECK (price > 0),
    ts     timestamptz NOT NULL,
    seq    bigint NOT NULL,
    CONSTRAINT ticks_source_seq UNIQUE (source, seq)
);
CREATE INDEX ticks_symbol_ts ON ticks (symbol, ts);

-- The newest tick of each (symbol, source), kept by the writer so a restarted hub has prices at once.
CREATE TABLE latest_ticks (
    symbol text NOT NULL,
    source text NOT NULL,
    id     bigint NOT NULL,
    price  numeric NOT NULL,
    ts     timestamptz NOT NULL,
    seq    bigint NOT NULL,
    PRIMARY KEY (symbol, source)
);
