"""Candle rollups: one-minute and one-hour OHLCV rows kept as ticks are stored, and candles read from them.

``candles_1m`` and ``candles_1h`` (migration 0010) hold per (symbol, bucket) what the raw candle query
(:data:`SQL_CANDLES`) computes from the ticks, plus what merging two parts of a bucket exactly
takes: the (time, hub id) of the open and the close tick and the exact sums of the sizes and of price * size.
The writer calls :func:`roll_up` in the transaction that stored a batch, so a committed tick is in its
rollups and a rolled-back one in neither. :func:`candles` answers from whole minutes and hours and reads raw
ticks only for the partial minutes at the edges of the range, so a year costs about what an hour does. Sums
of numerics keep the largest scale of their terms, so sums of sums are the same digits as one sum.

One thing no query can promise: when a bucket's high (or low) is reached by equal prices written with
different decimals ("1.5" and "1.50"), max() returns whichever the plan met last, so the raw query itself
may answer either; the rollups answer one of them too. Sources send one scale per symbol.
Rollups are rows of their own: retention that drops ticks leaves their candles (:func:`drop_before` drops
old buckets).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
#: The origin of every candle bucket (date_bin's), as in the raw candle query.
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
_LIMIT_MAX = 1 << 62

# Volume counts the ticks that carry a size (trades); a quote-only tick adds to count, never to volume.
# VWAP is exact sums divided in numeric (the 18 zero decimals make the division keep at least 18), then
# rounded to 18 places and trimmed of trailing zeros; NULL, like volume, when the bucket had no trade.
SQL_CANDLES = """
SELECT bucket, open::text, high::text, low::text, close::text, n, volume::text, trades,
       trim_scale(round((notional + 0.000000000000000000) / volume, 18))::text
FROM (
    SELECT date_bin($2::interval, ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
           (array_agg(price ORDER BY ts, id))[1] AS open,
           max(price) AS high,
           min(price) AS low,
           (array_agg(price ORDER BY ts DESC, id DESC))[1] AS close,
           count(*) AS n,
           sum(qty) AS volume,
           count(qty) AS trades,
           sum(price * qty) AS notional
    FROM ticks WHERE symbol = $1 AND ts >= $3 AND ts < $4
    GROUP BY bucket ORDER BY bucket DESC LIMIT $5
) AS c ORDER BY bucket
"""

_ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
_COLUMNS = "symbol, bucket, open, open_ts, open_id, high, low, close, close_ts, close_id, n, volume, trades, notional"


def _minutes_of(rows: str) -> str:
    """SQL: the rows ``(symbol, price, ts, id, qty)`` of ``rows`` as one rollup row per (symbol, minute).
    Open and close are the ends of one ordered array (an aggregate written twice is computed once): half
    the sorts of an array per end, which is most of the cost of rolling up a batch."""
    return f"""
    SELECT symbol, date_bin('1 minute', ts, {_ORIGIN}) AS bucket,
           (array_agg(price ORDER BY ts, id))[1] AS open, min(ts) AS open_ts,
           (array_agg(id ORDER BY ts, id))[1] AS open_id,
           max(price) AS high, min(price) AS low,
           (array_agg(price ORDER BY ts, id))[count(*)] AS close, max(ts) AS close_ts,
           (array_agg(id ORDER BY ts, id))[count(*)] AS close_id,
           count(*) AS n, sum(qty) AS volume, count(qty) AS trades, sum(price * qty) AS notional
    FROM {rows} GROUP BY symbol, bucket"""


def _combined(parts: str, bucket: str, per_symbol: bool = True) -> str:
    """SQL: the rollup rows of ``parts`` merged per ``bucket`` (an expression of their buckets), per symbol
    unless ``per_symbol`` is false."""
    symbol, keys = ("symbol, ", "1, 2") if per_symbol else ("", "1")
    return f"""
    SELECT {symbol}{bucket} AS bucket,
           (array_agg(open ORDER BY open_ts, open_id))[1] AS open, min(open_ts) AS open_ts,
           (array_agg(open_id ORDER BY open_ts, open_id))[1] AS open_id,
           max(high) AS high, min(low) AS low,
           (array_agg(close ORDER BY close_ts DESC, close_id DESC))[1] AS close, max(close_ts) AS close_ts,
           (array_agg(close_id ORDER BY close_ts DESC, close_id DESC))[1] AS close_id,
           sum(n)::bigint AS n, sum(volume) AS volume, sum(trades)::bigint AS trades, sum(notional) AS notional
    FROM {parts} GROUP BY {keys}"""


_OPEN = ("open", "open_ts", "open_id")
_CLOSE = ("close", "close_ts", "close_id")


def _merge_into(table: str, rows: str) -> str:
    """SQL: add the rollup rows of ``rows`` to ``table``: the earlier open, the later close, sums summed.
    In key order, so that two writers merging the same buckets lock them in the same order."""
    earlier = "(EXCLUDED.open_ts, EXCLUDED.open_id) < (c.open_ts, c.open_id)"
    later = "(EXCLUDED.close_ts, EXCLUDED.close_id) > (c.close_ts, c.close_id)"
    first = ", ".join(f"{k} = CASE WHEN {earlier} THEN EXCLUDED.{k} ELSE c.{k} END" for k in _OPEN)
    last = ", ".join(f"{k} = CASE WHEN {later} THEN EXCLUDED.{k} ELSE c.{k} END" for k in _CLOSE)
    return f"""
    INSERT INTO {table} AS c ({_COLUMNS}) SELECT {_COLUMNS} FROM {rows} ORDER BY symbol, bucket
    ON CONFLICT (symbol, bucket) DO UPDATE SET
        {first},
        high = greatest(c.high, EXCLUDED.high), low = least(c.low, EXCLUDED.low),
        {last},
        n = c.n + EXCLUDED.n,
        volume = coalesce(c.volume + EXCLUDED.volume, c.volume, EXCLUDED.volume),
        trades = c.trades + EXCLUDED.trades,
        notional = coalesce(c.notional + EXCLUDED.notional, c.notional, EXCLUDED.notional)"""


def _roll_up(rows_cte: str) -> str:
    """SQL: roll the tick rows of the CTE ``rows_cte`` defines (named ``batch``) into both tables."""
    per_hour = f"date_bin('1 hour', bucket, {_ORIGIN})"
    hours = f"({_combined('minutes', per_hour)}) AS hours"
    return f"""
WITH {rows_cte},
minutes AS ({_minutes_of("batch")}),
into_minutes AS ({_merge_into("candles_1m", "minutes")})
{_merge_into("candles_1h", hours)}
"""


#: For the rest of the writer's transaction: a batch's sort by (symbol, minute) fits in memory (4 MB, the
#: default, spilled a batch of 50,000 rows to disk: the rollup took 60-100 ms, 55-60 with this).
SQL_WORK_MEM = "SET LOCAL work_mem = '64MB'"
#: Roll up the ticks with an id in the ranges ``$1[i]..$2[i]`` and a time in [$3, $4]: a batch just stored.
#: The time bounds let a table partitioned by time read only the batch's partitions.
SQL_ROLL_UP = _roll_up(
    """batch AS (
    SELECT t.symbol, t.price, t.ts, t.id, t.qty
    FROM unnest($1::bigint[], $2::bigint[]) AS r (lo, hi)
    JOIN ticks AS t ON t.id BETWEEN r.lo AND r.hi
    WHERE t.ts BETWEEN $3 AND $4
)"""
)
#: The staged merge of a batch partly stored before (ON CONFLICT DO NOTHING), rolling up only the rows it
#: inserted.
SQL_MERGE_STAGED = _roll_up(
    """batch AS (
    INSERT INTO ticks SELECT * FROM ticks_staging ORDER BY id ON CONFLICT DO NOTHING
    RETURNING symbol, price, ts, id, qty
)"""
)

# Candles of $2 in [$3, $8): whole minutes [$4, $5) and [$6, $7) and whole hours [$5, $6) from the rollups,
# the partial minutes [$3, $4) and [$7, $8) from the ticks. A bucket of $2 holds at most $10 minute rows
# ($11 hour rows), so the newest $9 buckets lie in the newest $9 * $10 ($9 * $11) rows of each part.
_ROLLUP_PART = """(
    SELECT bucket, open, open_ts, open_id, high, low, close, close_ts, close_id, n, volume, trades, notional
    FROM {table} WHERE symbol = $1 AND bucket >= {lo} AND bucket < {hi} ORDER BY bucket DESC LIMIT {limit}
)"""
_EDGE_PART = """(
    SELECT bucket, open, open_ts, open_id, high, low, close, close_ts, close_id, n, volume, trades, notional
    FROM ({minutes}) AS e
)"""
_EDGE_TICKS = "(SELECT symbol, price, ts, id, qty FROM ticks WHERE symbol = $1 AND ts >= {lo} AND ts < {hi}) AS t"
SQL_ROLLED_CANDLES = f"""
WITH parts AS (
    {_ROLLUP_PART.format(table="candles_1m", lo="$4", hi="$5", limit="$10")}
    UNION ALL
    {_ROLLUP_PART.format(table="candles_1h", lo="$5", hi="$6", limit="$11")}
    UNION ALL
    {_ROLLUP_PART.format(table="candles_1m", lo="$6", hi="$7", limit="$10")}
    UNION ALL
    {_EDGE_PART.format(minutes=_minutes_of(_EDGE_TICKS.format(lo="$3", hi="$4")))}
    UNION ALL
    {_EDGE_PART.format(minutes=_minutes_of(_EDGE_TICKS.format(lo="$7", hi="$8")))}
)
SELECT bucket, open::text, high::text, low::text, close::text, n, volume::text, trades,
       trim_scale(round((notional + 0.000000000000000000) / volume, 18))::text
FROM (
    {_combined("parts", f"date_bin($2::interval, bucket, {_ORIGIN})", per_symbol=False)}
    ORDER BY 1 DESC LIMIT $9
) AS c ORDER BY bucket
"""

_DROP_BEFORE = {
    "candles_1m": "DELETE FROM candles_1m WHERE bucket < $1",
    "candles_1h": "DELETE FROM candles_1h WHERE bucket < $1",
}

Candle = tuple[datetime, str, str, str, str, int, str | None, int, str | None]


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """The ids as inclusive ranges of consecutive ids, in order (duplicates are one id)."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(ids):
        if ranges and i <= ranges[-1][1] + 1:
            if i > ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges


async def roll_up(conn: asyncpg.Connection, ranges: list[tuple[int, int]], ts_min: datetime, ts_max: datetime) -> None:
    """Add the stored ticks with an id in ``ranges`` and a time in [ts_min, ts_max] to the rollups. Run it in
    the transaction that stored them, and only on rows that transaction inserted (each tick counts once)."""
    if ranges:
        await conn.execute(SQL_WORK_MEM)
        await conn.execute(SQL_ROLL_UP, [lo for lo, _ in ranges], [hi for _, hi in ranges], ts_min, ts_max)


async def merge_staged(conn: asyncpg.Connection) -> None:
    """Insert the rows of ``ticks_staging`` not stored yet into ``ticks`` and roll up those rows alone."""
    await conn.execute(SQL_WORK_MEM)
    await conn.execute(SQL_MERGE_STAGED)


def _floor(t: datetime, grain: timedelta) -> datetime:
    return t - (t - ORIGIN) % grain


def _ceil(t: datetime, grain: timedelta) -> datetime | None:
    """The first bucket start at or after ``t``; None past the last time Python can hold."""
    start = _floor(t, grain)
    if start == t:
        return t
    try:
        return start + grain
    except OverflowError:
        return None


async def candles(
    pool_or_conn: asyncpg.Pool | asyncpg.Connection,
    symbol: str,
    interval: timedelta,
    since: datetime,
    until: datetime,
    limit: int,
) -> list[Candle]:
    """What the raw candle query answers for these arguments, read from the rollups where the range holds
    whole minutes: intervals of whole hours from hour rows, the partial hours at the edges from minute rows;
    any interval from minute rows; the partial minutes at the edges, and intervals that are not a whole
    number of minutes (1s), from the ticks."""
    whole_minutes = interval >= MINUTE and interval % MINUTE == timedelta(0)
    m_lo, m_hi = _ceil(since, MINUTE), _floor(until, MINUTE)
    if not whole_minutes or m_lo is None or m_lo >= m_hi:
        return [tuple(r) for r in await pool_or_conn.fetch(SQL_CANDLES, symbol, interval, since, until, limit)]
    h_lo = h_hi = m_hi
    hour_rows = 0
    if interval % HOUR == timedelta(0):
        lo, hi = _ceil(since, HOUR), _floor(until, HOUR)
        if lo is not None and lo < hi:
            h_lo, h_hi, hour_rows = lo, hi, interval // HOUR
    minute_rows = interval // MINUTE
    args: list[Any] = [symbol, interval, since, m_lo, h_lo, h_hi, m_hi, until, limit]
    args += [min(limit * minute_rows, _LIMIT_MAX), min(limit * hour_rows, _LIMIT_MAX)]
    return [tuple(r) for r in await pool_or_conn.fetch(SQL_ROLLED_CANDLES, *args)]


async def drop_before(conn: asyncpg.Connection | asyncpg.Pool, table: str, before: datetime) -> int:
    """Delete the rows of rollup ``table`` (``candles_1m`` or ``candles_1h``) whose bucket starts before
    ``before``; how many went. Hour candles read the partial hours at the edges of a range from minute
    rows, so keep minute rows at least as long as the ranges asked of hour and day candles reach back."""
    sql = _DROP_BEFORE.get(table)
    if sql is None:
        raise ValueError(f"not a rollup table: {table!r}")
    status = await conn.execute(sql, before)
    return int(status.split()[-1])
