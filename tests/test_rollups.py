"""Candle rollups (tickhub.rollup) against the real PostgreSQL: candles read from the one-minute and one-hour
rollups are the raw candle query's answer over the same ticks, field for field and digit for digit, for any
range and interval; the rollups count every stored tick once (batches out of id order, batches written again
so the staged merge runs) and nothing of a batch PostgreSQL refused; the migration rolls up a year of stored
ticks; volume is the exact sum of the sizes. `make soak` (TICKHUB_SOAK=1) runs many more examples.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.tick_archive import TickArchive, copy_archive
from tickhub import rollup
from tickhub.rollup import SQL_CANDLES, id_ranges
from tickhub.store import Store, migrations
from tickhub.wire import Tick, TickFields

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
EXAMPLES = 400 if SOAK else 25
FIRST = 1_000_000_000_001
#: Generated ticks fall in three hours that cross hours and a midnight: every kind of bucket edge.
BASE = datetime(2026, 11, 23, 22, 30, tzinfo=UTC)
WINDOW = timedelta(hours=3)
US = timedelta(microseconds=1)
INTERVALS = [
    timedelta(seconds=1),
    timedelta(seconds=90),  # not a whole number of minutes: the ticks
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=90),  # minutes, not hours
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(days=1),
]
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


async def raw_candles(store: Store, symbol: str, interval: timedelta, since: datetime, until: datetime, limit: int):
    """The candles as the ticks alone give them: the query Store.candles ran before the rollups."""
    return [tuple(r) for r in await store.pool.fetch(SQL_CANDLES, symbol, interval, since, until, limit)]


# -- generated ticks --------------------------------------------------------------------------------------------

amounts = st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(1, 10**9), st.integers(0, 18))
offsets = st.one_of(
    st.integers(0, WINDOW // US),
    st.integers(0, WINDOW // timedelta(minutes=1)).map(lambda m: m * 60_000_000),  # on a minute
    st.integers(0, 3).map(lambda h: h * 3_600_000_000 - 1_800_000_000),  # on an hour (22:30 + 0.5 h + ...)
)
edges = st.one_of(
    st.integers(-(20 * 60_000_000), (WINDOW + timedelta(minutes=20)) // US),
    st.integers(-20, 200).map(lambda m: m * 60_000_000),
    st.integers(-1, 4).map(lambda h: h * 3_600_000_000 - 1_800_000_000),
)


@dataclass
class Case:
    specs: list[tuple[int, int, Decimal, Decimal | None, int]]  # symbol, offset µs, price, qty, id step
    symbols: int
    early: list[tuple[int, int]]  # slices of the ticks written before the batches: later writes overlap them
    batches: list[tuple[int, int]]  # the ticks cut into batches, written in this order (not id order)
    again: list[int]  # batches written once more at the end
    seed: int  # the order of the ticks inside each write
    queries: list[tuple[int | None, int | None, int]]  # since, until (µs from BASE; None: open) and limit


@st.composite
def cases(draw: st.DrawFn) -> Case:
    symbols = draw(st.integers(1, 3))
    shared = draw(st.lists(offsets, min_size=1, max_size=4))  # times several ticks share
    tick = st.tuples(
        st.integers(0, symbols - 1),
        st.one_of(offsets, st.sampled_from(shared)),
        amounts,
        st.none() | amounts,
        st.integers(1, 3),  # ids with holes: a batch is several ranges
    )
    size = draw(st.integers(8, 120))
    specs = draw(st.lists(tick, min_size=size, max_size=size))
    n = len(specs)
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=6)))) if n > 1 else []
    bounds = [0, *(c for c in cuts if c < n), n]
    batches = draw(st.permutations(list(itertools.pairwise(bounds))))
    early = [
        (min(a, b), max(a, b) + 1) for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))))
    ][:3]
    again = draw(st.lists(st.integers(0, len(batches) - 1), max_size=2))
    query = st.tuples(st.none() | edges, st.none() | edges, st.one_of(st.integers(1, 3), st.just(1000)))
    queries = [
        (since, until, limit)
        for since, until, limit in draw(st.lists(query, min_size=1, max_size=3))
        if since is None or until is None or since < until
    ]
    return Case(specs, symbols, early, batches, again, draw(st.integers(0, 2**32)), queries)


def build_ticks(case: Case, k: int) -> tuple[list[Tick], list[str]]:
    """The case's ticks as example ``k`` writes them: its own source, symbols and ids. Equal prices are one
    text: of equal values written with different decimals ("1.5", "1.50") the raw query's max and min give
    whichever the plan met last, so no answer could be compared digit for digit."""
    symbols = [f"R{k}X{j}" for j in range(case.symbols)]
    texts: dict[Decimal, str] = {}
    ticks, id = [], FIRST + k * 10**6
    for n, (symbol, offset, price, qty, step) in enumerate(case.specs):
        id += step
        fields = None if qty is None else TickFields.of(qty=format(qty, "f"))
        at = BASE + offset * US
        ticks.append(
            Tick(
                id, f"p{k}", symbols[symbol], texts.setdefault(price, format(price, "f")), at, n + 1, None, None, fields
            )
        )
    return ticks, symbols


def test_rollup_candles_are_the_raw_candles(database_url: str, schema: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(database_url, schema, pool_size=2))
    examples = itertools.count()

    async def check(case: Case) -> None:
        k = next(examples)
        ticks, symbols = build_ticks(case, k)
        rng = random.Random(case.seed)

        async def write(a: int, b: int) -> None:
            part = ticks[a:b]
            rng.shuffle(part)
            await store.write_ticks(part)

        for a, b in case.early:
            await write(a, b)
        for a, b in case.batches:
            await write(a, b)
        for i in case.again:
            await write(*case.batches[i])
        for table in ("candles_1m", "candles_1h"):
            counted = await store.pool.fetchval(f"SELECT sum(n) FROM {table} WHERE symbol = ANY($1)", symbols)
            assert counted == len(ticks), f"{table} counts every stored tick once"
        for since_us, until_us, limit in case.queries:
            since = EARLIEST if since_us is None else BASE + since_us * US
            until = LATEST if until_us is None else BASE + until_us * US
            for symbol in symbols:
                for interval in INTERVALS:
                    want = await raw_candles(store, symbol, interval, since, until, limit)
                    got = await store.candles(symbol, interval, since, until, limit)
                    assert got == want, (symbol, interval, since, until, limit)

    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    @given(case=cases())
    def run(case: Case) -> None:
        loop.run_until_complete(check(case))

    try:
        run()
    finally:
        loop.run_until_complete(store.close())
        loop.close()


# -- a year, the migration, volume, refused batches ---------------------------------------------------------

YEAR = datetime(2025, 1, 1, tzinfo=UTC)
MINUTES_IN_YEAR = 365 * 24 * 60
SQL_A_YEAR_OF_TICKS = """
INSERT INTO ticks (id, source, symbol, price, ts, seq, qty)
SELECT $1::bigint + i, 'y', 'YEAR', round(100 + ((i * 7919) % 10007) / 100.0, 2),
       $2::timestamptz + i * interval '1 minute' + (i * 37 % 60) * interval '1 s' + (i * 101 % 1000) * interval '1 ms',
       i + 1, CASE WHEN i % 3 = 0 THEN NULL ELSE round(((i % 97) + 1) / 1000.0, 3) END
FROM generate_series(0::bigint, $3 - 1) AS i
"""


async def test_a_year_of_stored_ticks_is_rolled_up_by_the_migration_and_answers_daily_candles(
    database_url: str, schema: str
) -> None:
    """Ticks stored before the rollups existed (one a minute for a year) are rolled up by migration 0010;
    ticks written afterwards merge into those rows; 1d, 1h, 5m and 1m candles over the year, from and to
    times that are no bucket's edge, are the raw query's."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz)")
        for version, sql in migrations():
            if version < "0010":
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
        await conn.execute(SQL_A_YEAR_OF_TICKS, FIRST, YEAR, MINUTES_IN_YEAR)
    finally:
        await conn.close()
    store = await Store.open(database_url, schema)
    try:
        assert await store.pool.fetchval("SELECT count(*) FROM candles_1m") == MINUTES_IN_YEAR
        assert await store.pool.fetchval("SELECT count(*) FROM candles_1h") == MINUTES_IN_YEAR // 60
        later = [  # into minutes the migration rolled up: a new high, a new open, a trade
            Tick(FIRST + 10**6, "z", "YEAR", "999.99", YEAR + timedelta(days=200, seconds=59), 1),
            Tick(FIRST + 10**6 + 1, "z", "YEAR", "0.01", YEAR + timedelta(days=300), 2),
            Tick(
                FIRST + 10**6 + 2,
                "z",
                "YEAR",
                "150",
                YEAR + timedelta(days=364, hours=20, seconds=1),
                3,
                None,
                None,
                TickFields.of(qty="2.5"),
            ),
        ]
        await store.write_ticks(later)
        since = YEAR + timedelta(hours=7, minutes=13, seconds=27, microseconds=500)
        until = YEAR + timedelta(days=365) - timedelta(hours=3, minutes=1, seconds=1)
        for interval, limit in (
            (timedelta(days=1), 400),
            (timedelta(hours=1), 50),
            (timedelta(minutes=5), 300),
            (timedelta(minutes=1), 300),
        ):
            want = await raw_candles(store, "YEAR", interval, since, until, limit)
            assert await store.candles("YEAR", interval, since, until, limit) == want, interval
        days = await store.candles("YEAR", timedelta(days=1), EARLIEST, LATEST, 1000)
        assert len(days) == 365 and sum(d[5] for d in days) == MINUTES_IN_YEAR + len(later)
        assert days == await raw_candles(store, "YEAR", timedelta(days=1), EARLIEST, LATEST, 1000)
    finally:
        await store.close()


def exact_volume(trades: list[tuple[Decimal, Decimal]]) -> Decimal:
    with localcontext(prec=200):  # exact: sizes of up to 24 digits and 18 decimals
        return sum((q for _, q in trades), Decimal(0))


async def test_volume_is_the_exact_sum_of_the_sizes(database_url: str, schema: str) -> None:
    """Written in batches out of order and in parts written twice, each minute, hour and day holds the sum
    of the sizes of its trades as a decimal string (the largest number of decimals of its sizes) and their
    count; the whole candles, VWAP included, are the raw query's."""
    rng = random.Random(7)
    ticks: list[Tick] = []
    sizes: dict[timedelta, dict[datetime, list[tuple[Decimal, Decimal]]]] = defaultdict(lambda: defaultdict(list))
    intervals = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))
    for n in range(600):
        at = BASE + timedelta(seconds=rng.randint(0, 3 * 3600))
        price = Decimal(rng.randint(1, 10**12)).scaleb(-rng.randint(0, 18))
        qty = None if n % 4 == 0 else Decimal(rng.randint(1, 10**12)).scaleb(-rng.randint(0, 18))
        ticks.append(
            Tick(
                FIRST + n,
                "v",
                "VOL",
                format(price, "f"),
                at,
                n + 1,
                None,
                None,
                None if qty is None else TickFields.of(qty=format(qty, "f")),
            )
        )
        for interval in intervals:
            bucket = at - (at - rollup.ORIGIN) % interval
            sizes[interval][bucket] += [] if qty is None else [(price, qty)]
    store = await Store.open(database_url, schema)
    try:
        batches = [ticks[i : i + 50] for i in range(0, len(ticks), 50)]
        rng.shuffle(batches)
        for batch in batches:
            await store.write_ticks(batch)
        await store.write_ticks(ticks[100:400])  # stored already: the staged merge, which adds nothing
        for interval in intervals:
            candles = await store.candles("VOL", interval, BASE - timedelta(days=1), BASE + timedelta(days=1), 1000)
            assert [c[0] for c in candles] == sorted(sizes[interval])
            for c in candles:
                trades = sizes[interval][c[0]]
                volume = format(exact_volume(trades), "f") if trades else None
                assert (c[6], c[7]) == (volume, len(trades)), (interval, c[0])
                assert (c[8] is None) == (not trades)
            assert candles == await raw_candles(
                store, "VOL", interval, BASE - timedelta(days=1), BASE + timedelta(days=1), 1000
            )
    finally:
        await store.close()


async def test_a_batch_postgresql_refuses_leaves_the_rollups_as_they_were(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks([Tick(FIRST, "r", "REF", "10", BASE, 1)])
        before = [
            tuple(r) for r in await store.pool.fetch("SELECT * FROM candles_1m UNION ALL SELECT * FROM candles_1h")
        ]
        refused = [Tick(FIRST + 1, "r", "REF", "11", BASE, 2), Tick(FIRST + 2, "r", "REF", "0", BASE, 3)]
        with pytest.raises(asyncpg.CheckViolationError):
            await store.write_ticks(refused)  # price 0: the check refuses the whole batch
        after = [
            tuple(r) for r in await store.pool.fetch("SELECT * FROM candles_1m UNION ALL SELECT * FROM candles_1h")
        ]
        assert after == before
    finally:
        await store.close()


async def test_drop_before_deletes_old_buckets_of_one_table(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks(
            [Tick(FIRST + n, "d", "OLD", "1", BASE + timedelta(minutes=30 * n), n + 1) for n in range(4)]
        )
        async with store.pool.acquire() as conn:
            assert await rollup.drop_before(conn, "candles_1m", BASE + timedelta(minutes=60)) == 2
            assert await rollup.drop_before(conn, "candles_1h", BASE + timedelta(minutes=30)) == 1
            with pytest.raises(ValueError, match="not a rollup table"):
                await rollup.drop_before(conn, "ticks", BASE)
        assert await store.pool.fetchval("SELECT count(*) FROM candles_1m") == 2
        assert await store.pool.fetchval("SELECT count(*) FROM candles_1h") == 2
    finally:
        await store.close()


def test_id_ranges_are_the_runs_of_consecutive_ids() -> None:
    assert id_ranges([]) == []
    assert id_ranges([5]) == [(5, 5)]
    assert id_ranges([7, 3, 4, 5, 9, 8, 12, 4]) == [(3, 5), (7, 9), (12, 12)]
    assert id_ranges(iter([2, 1])) == [(1, 2)]


async def test_archived_ticks_copied_by_the_storage_benchmark_are_rolled_up(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    archive = TickArchive(YEAR, per_day=20_000)
    try:
        async with store.pool.acquire() as conn:
            assert await copy_archive(conn, schema, archive, FIRST, 12_000, chunk=5_000) == 12_000
        assert await store.pool.fetchval("SELECT sum(n) FROM candles_1m") == 12_000
        since, until = YEAR + timedelta(seconds=30), YEAR + timedelta(hours=20, seconds=7)
        for interval in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)):
            want = await raw_candles(store, "ETHUSD", interval, since, until, 2000)
            assert want and await store.candles("ETHUSD", interval, since, until, 2000) == want
    finally:
        await store.close()
