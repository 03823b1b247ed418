-- Ticks partitioned by the day of their time (ts, UTC), so that old data leaves by dropping whole
-- partitions (TICKHUB_RETENTION) and queries by time read only the days they ask for.
--
-- The partitions tile the whole time line, with no default partition: `ticks_past` holds everything
-- before the first day, one partition per day follows (`ticks_YYYYMMDD`), and `ticks_future` holds
-- everything from the day after the last. The hub keeps days created ahead and moves the first day
-- forward as retention drops old ones (tickhub.partitions), each change one short transaction; a tick of
-- any time always has a partition.
--
-- Unique keys of a partitioned table must hold its partition key: the primary key is (id, ts) and the
-- replay key (source, seq, ts). A tick written twice has the same ts, so it meets itself in the same
-- partition and is stored once (ingest already drops replays by (source, seq) before they reach the
-- writer; this key is the writer's own guard, as before).
ALTER TABLE ticks RENAME TO ticks_unpartitioned;
ALTER TABLE ticks_unpartitioned RENAME CONSTRAINT ticks_pkey TO ticks_unpartitioned_pkey;
ALTER TABLE ticks_unpartitioned RENAME CONSTRAINT ticks_source_seq TO ticks_unpartitioned_source_seq;
ALTER INDEX ticks_symbol_ts RENAME TO ticks_unpartitioned_symbol_ts;

CREATE TABLE ticks (
    id       bigint NOT NULL,
    source   text NOT NULL,
    symbol   text NOT NULL,
    price    numeric NOT NULL CHECK (price > 0),
    ts       timestamptz NOT NULL,
    seq      bigint NOT NULL,
    extra    jsonb,
    qty      numeric CHECK (qty > 0),
    side     text CHECK (side IN ('buy', 'sell')),
    trade_id text,
    bid      numeric CHECK (bid > 0),
    bid_qty  numeric CHECK (bid_qty >= 0),
    ask      numeric CHECK (ask > 0),
    ask_qty  numeric CHECK (ask_qty >= 0),
    CONSTRAINT ticks_pkey PRIMARY KEY (id, ts),
    CONSTRAINT ticks_source_seq UNIQUE (source, seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX ticks_symbol_ts ON ticks (symbol, ts);

-- The days of the existing rows get a partition each (from 31 days before today at most: older rows go
-- to ticks_past), today and the next three days too; future rows past 30 days go to ticks_future.
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    first_day date;
    last_day date;
    d date;
BEGIN
    SELECT (min(ts) AT TIME ZONE 'UTC')::date, (max(ts) AT TIME ZONE 'UTC')::date
    INTO first_day, last_day FROM ticks_unpartitioned;
    first_day := least(greatest(coalesce(first_day, today), today - 31), today);
    last_day := greatest(least(coalesce(last_day, today), today + 30), today + 3);
    EXECUTE format(
        'CREATE TABLE ticks_past PARTITION OF ticks FOR VALUES FROM (MINVALUE) TO (%L)',
        first_day::timestamp AT TIME ZONE 'UTC'
    );
    d := first_day;
    WHILE d <= last_day LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ticks FOR VALUES FROM (%L) TO (%L)',
            'ticks_' || to_char(d, 'YYYYMMDD'),
            d::timestamp AT TIME ZONE 'UTC',
            (d + 1)::timestamp AT TIME ZONE 'UTC'
        );
        d := d + 1;
    END LOOP;
    EXECUTE format(
        'CREATE TABLE ticks_future PARTITION OF ticks FOR VALUES FROM (%L) TO (MAXVALUE)',
        (last_day + 1)::timestamp AT TIME ZONE 'UTC'
    );
END
$$;

-- Every row moves over, in id order.
INSERT INTO ticks (id, source, symbol, price, ts, seq, extra, qty, side, trade_id, bid, bid_qty, ask, ask_qty)
SELECT id, source, symbol, price, ts, seq, extra, qty, side, trade_id, bid, bid_qty, ask, ask_qty
FROM ticks_unpartitioned ORDER BY id;
DROP TABLE ticks_unpartitioned;

-- What retention dropped: a resume from an id below `dropped_through_id` would miss ticks that are gone,
-- so it gets `resync too_old`. One row, written by the partition maintenance in its transaction.
CREATE TABLE tick_retention (
    one                boolean PRIMARY KEY DEFAULT true CHECK (one),
    dropped_through_id bigint NOT NULL,
    dropped_before     timestamptz NOT NULL,
    dropped_at         timestamptz NOT NULL DEFAULT now()
);
