"""The tick table by day: the migration that moves an existing table over, days created ahead, retention
that drops whole days (a resume into them gets ``resync too_old``), exact dedup across day boundaries, and
a hypothesis walk over writes, duplicates, late and early ticks and maintenance rounds."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from helpers import running_hub, subscribe
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tickhub import partitions
from tickhub.config import Settings
from tickhub.partitions import PAST, maintain
from tickhub.store import STORED_COLUMNS, Store, copy_rows, migrations
from tickhub.wire import Tick, TickFields

SOAK = os.environ.get("TICKHUB_SOAK") == "1"
FIRST = 5 * 10**12


def tick(n: int, at: datetime, source: str = "s", symbol: str = "BTCUSD", seq: int | None = None) -> Tick:
    return Tick(
        FIRST + n,
        source,
        symbol,
        f"{100 + n % 50}.25",
        at,
        n if seq is None else seq,
        None,
        None,
        TickFields.of(qty="1.5"),
    )


async def layout(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Each partition and its bound, in time order (ticks_past first)."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ticks'::regclass"
    )
    order = {PAST: "0", partitions.FUTURE: "9"}
    return sorted(((r[0], r[1]) for r in rows), key=lambda r: order.get(r[0], "5" + r[0]))


async def where(conn: asyncpg.Connection) -> dict[int, str]:
    """Each stored tick's id → the partition that holds it."""
    return {r[0]: r[1] for r in await conn.fetch("SELECT id, tableoid::regclass::text FROM ticks")}


def assert_tiled(parts: list[tuple[str, str]]) -> None:
    """ticks_past, then consecutive days, then ticks_future: every time has exactly one partition."""
    names = [name for name, _ in parts]
    assert names[0] == PAST and names[-1] == partitions.FUTURE, names
    days = [partitions.day_of(n) for n in names[1:-1]]
    assert all(d is not None for d in days) and days, names
    assert days == [days[0] + timedelta(days=i) for i in range(len(days))], f"a hole or an overlap: {names}"
    assert f"TO ('{days[0]:%Y-%m-%d} 00:00:00+00')" in parts[0][1], parts[0]
    assert f"FROM ('{days[-1] + timedelta(days=1):%Y-%m-%d} 00:00:00+00')" in parts[-1][1], parts[-1]


async def test_a_fresh_table_has_the_past_today_days_ahead_and_the_future(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        async with store.pool.acquire() as conn:
            parts = await layout(conn)
        assert_tiled(parts)
        today = datetime.now(UTC).date()
        days = [partitions.day_of(n) for n, _ in parts[1:-1]]
        assert days[0] == today and days[-1] == today + timedelta(days=3)
    finally:
        await store.close()


async def test_the_migration_moves_every_row_of_an_existing_table_into_its_day(database_url: str, schema: str) -> None:
    """A table of the version before: rows of today, of earlier days, of year 1 and 9999. After the migration
    each is in the partition of its day (or the past / future one), and reads back as the same bytes."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    times = [
        datetime(1, 1, 1, tzinfo=UTC),
        today - timedelta(days=900),  # before the 31 days the migration lays out: the past
        today - timedelta(days=3),
        today - timedelta(days=3, hours=11, microseconds=1),  # the day before, at 23:59:59.999999
        today,
        today + timedelta(days=10),
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    ]
    ticks = [tick(n, at) for n, at in enumerate(times, 1)]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz)")
        for version, sql in [(v, s) for v, s in migrations() if v < "0009"]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
        await conn.copy_to_table("ticks", source=io.BytesIO(copy_rows(ticks)), columns=STORED_COLUMNS)
    finally:
        await conn.close()
    store = await Store.open(database_url, schema)
    try:
        assert [t.json for t in await store.ticks_after(0, 1 << 62, None, 100)] == [t.json for t in ticks]
        async with store.pool.acquire() as conn:
            parts = await layout(conn)
            held = await where(conn)
        assert_tiled(parts)
        first_day = (today - timedelta(days=31)).date()
        assert partitions.day_of(parts[1][0]) == first_day, "31 days back at most: older rows go to the past"
        assert partitions.day_of(parts[-2][0]) == (today + timedelta(days=30)).date(), "30 days ahead at most"
        expect = [PAST, PAST, *(partitions.day_name(t.time.date()) for t in ticks[2:6]), partitions.FUTURE]
        assert [held[t.id] for t in ticks] == expect
    finally:
        await store.close()


async def test_days_ahead_are_created_and_an_early_tick_moves_into_its_day(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    try:
        async with store.pool.acquire() as conn:
            last = partitions.day_of((await layout(conn))[-2][0])
            early = tick(1, datetime.combine(last + timedelta(days=2), datetime.min.time(), UTC) + timedelta(hours=5))
            await store.write_ticks([early])
            assert (await where(conn))[early.id] == partitions.FUTURE
            later = datetime.combine(last, datetime.min.time(), UTC)  # three days on, the partitions follow
            change = await maintain(conn, later, None)
            assert change is not None and change.created == [
                partitions.day_name(last + timedelta(days=i)) for i in (1, 2, 3)
            ]
            assert change.moved == 1 and (await where(conn))[early.id] == partitions.day_name(early.time.date())
            assert_tiled(await layout(conn))
            assert not await maintain(conn, later, None), "nothing more to do the same day"
            assert [t.json for t in await store.history("BTCUSD", None, None, 10)] == [early.json]
    finally:
        await store.close()


async def test_retention_drops_whole_days_and_a_resume_into_them_is_too_old(settings: Settings) -> None:
    now = datetime.now(UTC)
    old = [tick(n, now - timedelta(days=d), seq=n) for n, d in ((1, 6), (2, 5), (3, 4))]
    late = tick(4, now - timedelta(days=30), seq=4)  # a tick that came late, older than the first day
    kept = [tick(n, now - timedelta(days=d), seq=n) for n, d in ((5, 2), (6, 1), (7, 0))]
    store = await Store.open(settings.database_url or "", settings.database_schema)
    try:
        async with store.pool.acquire() as conn:
            await store.write_ticks([*old, *kept])  # before the first day: into the past
            await maintain(conn, now, timedelta(days=8))  # a retention that keeps them: their days come out of it
            assert set((await where(conn)).values()) == {partitions.day_name(t.time.date()) for t in (*old, *kept)}
            await store.write_ticks([late])
            assert (await where(conn))[late.id] == PAST
            change = await maintain(conn, now, timedelta(days=3))
            assert change is not None
            assert {partitions.day_name(t.time.date()) for t in old} <= set(change.dropped)
            assert change.emptied == 1 and change.dropped_through_id == late.id, "the past goes too"
            assert_tiled(await layout(conn))
            held = sorted((await where(conn)).keys())
            assert held == [t.id for t in kept], "days that end before now - 3 days are gone, the rest kept"
            assert await store.dropped_through() == late.id
    finally:
        await store.close()
    async with running_hub(settings.replace(retention=timedelta(days=3))) as hub:
        health = hub.hub.health()["storage"]
        assert health["dropped_through_id"] == str(late.id) and health["retention_seconds"] == 3 * 86400
        assert (health["lowest_id"], health["oldest_ts"]) == (str(kept[0].id), kept[0].ts)
        assert health["dropped_late_ticks"] == 0, "this hub's rounds dropped none; the earlier one did"
        for cursor in (old[0].id, late.id - 1):
            async with subscribe(hub.url, last_event_id=str(cursor)) as stream:
                event = await stream.next_event("resync")
                assert "too_old" in event.data, f"a resume from {cursor} would miss dropped ticks"
        async with subscribe(hub.url, last_event_id=str(late.id)) as stream:  # after the newest dropped: exact
            assert [int(t["id"]) for t in await stream.ticks(3)] == [t.id for t in kept]


async def test_a_tick_written_twice_across_midnight_is_stored_once(database_url: str, schema: str) -> None:
    """The replay key is (source, seq, ts) per partition: a tick meets itself in its own day, so the
    writer's guard holds across day boundaries; the batch that repeats it takes the merge path."""
    store = await Store.open(database_url, schema)
    try:
        midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
        pair = [tick(1, midnight - timedelta(microseconds=1)), tick(2, midnight)]
        await store.write_ticks(pair)
        await store.write_ticks([*pair, tick(3, midnight + timedelta(seconds=1))])
        await store.write_ticks(pair[::-1])
        async with store.pool.acquire() as conn:
            held = await where(conn)
        assert held == {
            FIRST + 1: partitions.day_name(midnight.date() - timedelta(days=1)),
            FIRST + 2: partitions.day_name(midnight.date()),
            FIRST + 3: partitions.day_name(midnight.date()),
        }
        assert await store.last_seqs(["s"]) == {"s": 3}
    finally:
        await store.close()


async def test_maintenance_gives_way_to_a_long_transaction_and_tries_again(database_url: str, schema: str) -> None:
    store = await Store.open(database_url, schema)
    blocker = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        async with store.pool.acquire() as conn:
            last = partitions.day_of((await layout(conn))[-2][0])
            later = datetime.combine(last, datetime.min.time(), UTC)
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE ticks IN ROW EXCLUSIVE MODE")  # a writer's COPY in progress
            assert await maintain(conn, later, None, lock_timeout="50ms") is None
            await tx.rollback()
            change = await maintain(conn, later, None, lock_timeout="50ms")
            assert change is not None and len(change.created) == 3
    finally:
        await blocker.close()
        await store.close()


# --- a walk: writes (with repeats, late and early ticks) and maintenance rounds as days go by -------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.lists(st.integers(-12, 6), min_size=1, max_size=6), st.booleans()),
        st.tuples(st.just("day"), st.integers(0, 3), st.sampled_from([None, 1, 2, 5, 9])),
    ),
    min_size=1,
    max_size=12,
)


@hsettings(max_examples=60 if SOAK else 8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_walk_of_writes_repeats_and_rounds_keeps_every_tick_retention_keeps_once(
    database_url: str, schema: str, ops: list
) -> None:
    asyncio.run(_walk(database_url, f"{schema}_{uuid.uuid4().hex[:8]}", ops))  # a schema of its own each time


async def _walk(database_url: str, schema: str, ops: list) -> None:
    """Model: every written tick is stored once unless retention dropped its day (or it came late into the
    past, emptied with it); the partitions always tile; the highest dropped id is remembered."""
    store = await Store.open(database_url, schema)
    try:
        now = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0)
        written: dict[int, Tick] = {}
        dropped: set[int] = set()
        n = 0
        async with store.pool.acquire() as conn:
            for op in ops:
                if op[0] == "write":
                    _, offsets, repeat = op
                    batch = []
                    for hours in offsets:
                        n += 1
                        batch.append(tick(n, now + timedelta(hours=hours * 7), seq=n))
                    if repeat and written:
                        batch.append(max(written.values(), key=lambda t: t.id))  # the newest again: the merge path
                    await store.write_ticks(sorted(batch, key=lambda t: t.id))
                    written.update((t.id, t) for t in batch)
                    dropped -= {t.id for t in batch}  # a repeat of a dropped tick is stored again
                else:
                    _, days_on, keep_days = op
                    now += timedelta(days=days_on)
                    retention = None if keep_days is None else timedelta(days=keep_days)
                    change = await maintain(conn, now, retention)
                    assert change is not None
                    held = set(await where(conn))
                    gone = set(written) - held - dropped
                    dropped |= gone
                    assert retention is not None or not gone, f"dropped without a retention: {ops}"
                    if retention is not None:
                        horizon = datetime.combine(partitions.first_day_kept(now, retention), datetime.min.time(), UTC)
                        assert all(written[i].time < horizon for i in gone), f"a tick within retention went: {ops}"
                        assert all(written[i].time >= horizon for i in held), f"a tick before the first day kept: {ops}"
                assert_tiled(await layout(conn))
            held = await where(conn)
            assert set(held) == set(written) - dropped
            assert len(held) == await conn.fetchval("SELECT count(*) FROM ticks"), "each once"
            if dropped:
                assert await store.dropped_through() >= max(dropped)
    finally:
        await store.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_rollups_are_kept_for_their_own_retention_in_whole_days(database_url: str, schema: str) -> None:
    """Ticks go after TICKHUB_RETENTION; their candles stay until TICKHUB_ROLLUP_RETENTION, minute and hour
    rows alike, a day at a time."""
    now = datetime.now(UTC)
    ticks = [tick(n, now - timedelta(days=d), seq=n) for n, d in enumerate((10, 5, 0), 1)]
    store = await Store.open(database_url, schema)
    try:
        async with store.pool.acquire() as conn:
            await maintain(conn, now, timedelta(days=20))
        await store.write_ticks(ticks)
        keeper = partitions.PartitionKeeper(store.pool, timedelta(days=3), rollup_retention=timedelta(days=7))
        await keeper.round(now)
        async with store.pool.acquire() as conn:
            assert sorted(await where(conn)) == [ticks[2].id], "ticks: 3 days"
            for table in ("candles_1m", "candles_1h"):
                buckets = sorted(r[0] for r in await conn.fetch(f"SELECT bucket FROM {table}"))
                assert [b.date() for b in buckets] == [t.time.date() for t in ticks[1:]], table
        # the ticks of 10 and 5 days ago were in ticks_past (no day of theirs was made): emptied with it
        assert keeper.state.rollup_rows_dropped == 2 and keeper.state.dropped_late_ticks == 2
    finally:
        await store.close()


async def test_a_long_retention_makes_days_only_for_ticks_it_keeps(database_url: str, schema: str) -> None:
    """TICKHUB_RETENTION=3650d on a fresh table makes no partition for ten years of empty days (each costs
    PostgreSQL lock slots); a late tick within it gets its own day, and ticks_past is never emptied while it
    holds a tick the retention keeps."""
    now = datetime.now(UTC)
    store = await Store.open(database_url, schema)
    try:
        async with store.pool.acquire() as conn:
            before = await layout(conn)
            change = await maintain(conn, now, timedelta(days=3650))
            assert change is not None and not change and await layout(conn) == before
            late = tick(1, now - timedelta(days=20), seq=1)
            ancient = tick(2, now - timedelta(days=3000), seq=2)  # kept, but further back than days are made
            await store.write_ticks([late, ancient])
            change = await maintain(conn, now, timedelta(days=3650))
            assert change is not None and change.created[0] == partitions.day_name(late.time.date())
            assert not change.dropped and change.emptied == 0
            held = await where(conn)
            assert held == {late.id: partitions.day_name(late.time.date()), ancient.id: PAST}
            assert_tiled(await layout(conn))
            change = await maintain(conn, now, timedelta(days=1000))  # now the ancient one is past retention
            assert change is not None and change.emptied == 1 and change.dropped_through_id == ancient.id
            assert set(await where(conn)) == {late.id}
    finally:
        await store.close()
