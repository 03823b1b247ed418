-- Candle rollups: per symbol, one row per minute and one per hour of what GET /prices/{symbol}/candles
-- computes from the ticks (tickhub.rollup keeps them as the writer stores ticks and reads candles from them).
-- Buckets are date_bin of the tick's time with the candles' origin, 2000-01-01 UTC, so every candle interval
-- that is a whole number of minutes (of hours) is a union of whole rows. Each row keeps what an exact merge of
-- two parts needs: the time and hub id of its open and close tick (open and close follow source time, then hub
-- order), and the exact sums behind volume and VWAP: volume (sum of qty) and notional (sum of price * qty),
-- both NULL while the bucket has no tick with a size, as in the candles.
CREATE TABLE candles_1m (
    symbol   text NOT NULL,
    bucket   timestamptz NOT NULL,
    open     numeric NOT NULL,
    open_ts  timestamptz NOT NULL,
    open_id  bigint NOT NULL,
    high     numeric NOT NULL,
    low      numeric NOT NULL,
    close    numeric NOT NULL,
    close_ts timestamptz NOT NULL,
    close_id bigint NOT NULL,
    n        bigint NOT NULL,
    volume   numeric,
    trades   bigint NOT NULL,
    notional numeric,
    PRIMARY KEY (symbol, bucket)
);
CREATE TABLE candles_1h (LIKE candles_1m INCLUDING ALL);

-- Every stored tick, once: the minutes from the ticks, the hours from the minutes.
INSERT INTO candles_1m
SELECT symbol,
       date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       (array_agg(price ORDER BY ts, id))[1],
       min(ts),
       (array_agg(id ORDER BY ts, id))[1],
       max(price),
       min(price),
       (array_agg(price ORDER BY ts, id))[count(*)],
       max(ts),
       (array_agg(id ORDER BY ts, id))[count(*)],
       count(*),
       sum(qty),
       count(qty),
       sum(price * qty)
FROM ticks
GROUP BY symbol, bucket;

INSERT INTO candles_1h
SELECT symbol,
       date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
       (array_agg(open ORDER BY open_ts, open_id))[1],
       min(open_ts),
       (array_agg(open_id ORDER BY open_ts, open_id))[1],
       max(high),
       min(low),
       (array_agg(close ORDER BY close_ts DESC, close_id DESC))[1],
       max(close_ts),
       (array_agg(close_id ORDER BY close_ts DESC, close_id DESC))[1],
       sum(n),
       sum(volume),
       sum(trades),
       sum(notional)
FROM candles_1m
GROUP BY symbol, hour;
