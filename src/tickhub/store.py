"""PostgreSQL storage: the pool, migrations, tick writes and the read queries. Knows nothing of HTTP."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources

import asyncpg
import orjson
import stamina

from . import rollup
from .wire import NO_FIELDS_ROW, OPTIONAL_FIELDS, Tick, TickFields

log = logging.getLogger("tickhub.store")

TICK_COLUMNS = ("id", "source", "symbol", "price", "ts", "seq")
#: What the writer stores: the common columns, the optional fields (NULL when absent) and ``extra``
#: (jsonb, NULL for ordinary ticks), in the order of a tick's JSON.
STORED_COLUMNS = (*TICK_COLUMNS, *OPTIONAL_FIELDS, "extra")
#: Hub ids are ``run * RUN_SPAN + n``: ids grow across restarts without persisting every id.
RUN_SPAN = 10**12

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.CannotConnectNowError,
)

# Amounts come back as text: numeric keeps the scale it was given ("1.50"), so a tick rebuilt from its
# row is the bytes the source sent.
_TICK_VALUES = (
    "id, source, symbol, price::text, ts, seq,"
    " qty::text, side, trade_id, bid::text, bid_qty::text, ask::text, ask_qty::text, extra"
)
_SELECT_TICK = f"SELECT {_TICK_VALUES} FROM ticks"

SQL_NEW_RUN = "INSERT INTO hub_runs (host) VALUES ($1) RETURNING run"
SQL_LAST_SEQ = "SELECT max(seq) FROM ticks WHERE source = $1"
SQL_LATEST = f"SELECT {_TICK_VALUES} FROM latest_ticks ORDER BY id"
SQL_UPSERT_LATEST = """
INSERT INTO latest_ticks (symbol, source, id, price, ts, seq, qty, side, trade_id, bid, bid_qty, ask, ask_qty, extra)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::bigint[], $4::numeric[], $5::timestamptz[], $6::bigint[], $7::numeric[],
    $8::text[], $9::text[], $10::numeric[], $11::numeric[], $12::numeric[], $13::numeric[], $14::jsonb[]
) AS u (symbol, source, id, price, ts, seq, qty, side, trade_id, bid, bid_qty, ask, ask_qty, extra)
ORDER BY symbol, source
ON CONFLICT (symbol, source) DO UPDATE
    SET id = EXCLUDED.id, price = EXCLUDED.price, ts = EXCLUDED.ts, seq = EXCLUDED.seq, qty = EXCLUDED.qty,
        side = EXCLUDED.side, trade_id = EXCLUDED.trade_id, bid = EXCLUDED.bid, bid_qty = EXCLUDED.bid_qty,
        ask = EXCLUDED.ask, ask_qty = EXCLUDED.ask_qty, extra = EXCLUDED.extra
    WHERE latest_ticks.id < EXCLUDED.id
"""
SQL_STAGE = "CREATE TEMP TABLE ticks_staging (LIKE ticks) ON COMMIT DROP"
SQL_AFTER = _SELECT_TICK + " WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3"
SQL_AFTER_SYMBOLS = _SELECT_TICK + " WHERE id > $1 AND id < $2 AND symbol = ANY($3::text[]) ORDER BY id LIMIT $4"
SQL_COUNT_AFTER = "SELECT count(*) FROM (SELECT 1 FROM ticks WHERE id > $1 AND id < $2 LIMIT $3) AS t"
SQL_COUNT_AFTER_SYMBOLS = (
    "SELECT count(*) FROM (SELECT 1 FROM ticks WHERE id > $1 AND id < $2 AND symbol = ANY($3::text[]) LIMIT $4) AS t"
)
SQL_HISTORY_FORWARD = _SELECT_TICK + " WHERE symbol = $1 AND ts >= $2 AND ts < $3 ORDER BY ts, id LIMIT $4"
SQL_TICK_TS = "SELECT ts FROM ticks WHERE id = $1 AND symbol = $2"
SQL_HISTORY_AFTER = _SELECT_TICK + " WHERE symbol = $1 AND (ts, id) > ($2, $3) AND ts < $4 ORDER BY ts, id LIMIT $5"
SQL_HISTORY_NEWEST = (
    "SELECT * FROM (" + _SELECT_TICK + " WHERE symbol = $1 AND ts >= $2 AND ts < $3"
    " ORDER BY ts DESC, id DESC LIMIT $4) AS t ORDER BY ts, id"
)
SQL_RECORD_GAPS = """
INSERT INTO tick_gaps (first_id, last_id, reason)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
ON CONFLICT (first_id) DO UPDATE SET last_id = greatest(tick_gaps.last_id, EXCLUDED.last_id)
"""
SQL_SET_ASIDE = """
INSERT INTO rejected_ticks (id, source, seq, tick, error)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::text[])
ON CONFLICT (id) DO NOTHING
"""
SQL_DROPPED_THROUGH = "SELECT dropped_through_id FROM tick_retention"
SQL_HAS_GAP = "SELECT EXISTS (SELECT 1 FROM tick_gaps WHERE first_id < $2 AND last_id > $1)"
SQL_MIGRATION_LOCK = "SELECT pg_advisory_lock(hashtext('tickhub.migrate.' || $1))"
SQL_MIGRATION_UNLOCK = "SELECT pg_advisory_unlock(hashtext('tickhub.migrate.' || $1))"
SQL_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

TIME_MIN = datetime(1, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, tzinfo=UTC)


#: What PostgreSQL (or asyncpg, encoding a value) refuses because of the data itself: retrying the
#: same rows fails the same way. Client-side ``asyncpg`` data errors are ``InterfaceError`` *and*
#: ``ValueError``; they are data errors, not a lost connection.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError, TypeError)


class StoreUnavailable(RuntimeError):
    """PostgreSQL could not be reached or dropped the connection; the operation may be retried."""


def is_data_error(exc: BaseException) -> bool:
    """True if ``exc`` says the rows are bad, so that retrying them as they are cannot succeed."""
    return isinstance(exc, _DATA_ERRORS) and not isinstance(exc, StoreUnavailable)


@contextlib.contextmanager
def unavailable_as_error() -> AsyncIterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        if isinstance(exc, ValueError):  # asyncpg's client-side DataError: the data, not the connection
            raise
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _tick(row: Sequence) -> Tick:
    extra = row[13]
    return Tick(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        None,
        None if extra is None else orjson.loads(extra),
        TickFields.of(*row[6:13]),
    )


_NO_FIELDS = (None,) * len(OPTIONAL_FIELDS)


def _latest_row(t: Tick) -> tuple:
    """A tick as the values of one latest_ticks row (the order of SQL_UPSERT_LATEST's arrays)."""
    fields = _NO_FIELDS if t.fields is None else t.fields.values()
    return (t.symbol, t.source, t.id, t.price, t.time, t.seq, *fields, None if t.extra is None else t.extra.decode())


def _printable(text: str) -> str:
    """``text`` as PostgreSQL's text accepts it, whatever it holds (a NUL, a lone surrogate)."""
    return text.encode("utf-8", "replace").decode().replace("\0", "\ufffd")


def copy_rows(ticks: Sequence[Tick]) -> bytes:
    """Ticks as the rows of a text-format COPY into STORED_COLUMNS.

    Text rather than binary COPY: building one bytes string costs the hub a quarter of the CPU of
    asyncpg's per-field binary encoding, and PostgreSQL parses the text on its own core (measured:
    BENCHMARKS.md, "Ingest"). The text format needs no escaping for fields that cannot hold a tab,
    newline or backslash, which the edges guarantee (source names, symbols, prices and the optional
    fields match their patterns, ts is canonical); the extra JSON may hold backslashes, which COPY
    needs doubled. The optional fields are a tick's :attr:`TickFields.row`, made once at ingest.
    """
    return b"".join(
        [
            b"%d\t%b\t%b\t%b\t%b\t%d\t%b\t%b\n"
            % (
                t.id,
                t.source.encode(),
                t.symbol.encode(),
                t.price.encode(),
                t.ts.encode(),
                t.seq,
                NO_FIELDS_ROW if t.fields is None else t.fields.row,
                b"\\N" if t.extra is None else t.extra.replace(b"\\", b"\\\\"),
            )
            for t in ticks
        ]
    )


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """COPY data as an async iterable: asyncpg reads a file-like source through a thread-pool executor,
    which under a busy event loop waits on the GIL for every 512 KiB (BENCHMARKS.md, "Profile")."""
    yield data


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration file, in order."""
    files = resources.files("tickhub.migrations")
    found = sorted(f.name for f in files.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), files.joinpath(name).read_text()) for name in found]


class Store:
    """The hub's PostgreSQL: one asyncpg pool, created inside the running loop by :meth:`open`."""

    def __init__(self, pool: asyncpg.Pool, schema: str, url: str = "", timeout: float = 10.0) -> None:
        self.pool = pool
        self.schema = schema
        self.url = url
        self.timeout = timeout

    @classmethod
    async def open(cls, url: str, schema: str = "public", pool_size: int = 10, timeout: float = 10.0) -> Store:
        """Connect (retrying briefly while the server starts), create the schema, apply migrations."""

        @stamina.retry(on=_UNAVAILABLE, attempts=10, timeout=max(30.0, timeout), wait_max=3.0)
        async def connect() -> asyncpg.Pool:
            conn = await asyncpg.connect(url, timeout=timeout)
            try:
                # An identifier cannot be a bind parameter; Settings restricts it to [a-z0-9_].
                # IF NOT EXISTS still races between concurrent starts, so the loser's error is ignored.
                with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            finally:
                await conn.close()
            return await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=timeout,
                command_timeout=timeout,
                server_settings={"search_path": schema, "application_name": "tickhub"},
            )

        store = cls(await connect(), schema, url, timeout)
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pool.close()

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool: for long-held session locks and LISTEN."""
        with unavailable_as_error():
            return await asyncpg.connect(
                self.url,
                timeout=self.timeout,
                server_settings={"search_path": self.schema, "application_name": "tickhub"},
            )

    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock, so replicas starting together agree."""
        applied_now: list[str] = []
        async with self.pool.acquire() as conn:
            await conn.execute(SQL_MIGRATION_LOCK, self.schema)
            try:
                await conn.execute(SQL_MIGRATIONS_TABLE)
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, sql in migrations():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    applied_now.append(version)
                    log.info("applied migration %s", version)
            finally:
                await conn.execute(SQL_MIGRATION_UNLOCK, self.schema)
        return applied_now

    async def new_run(self) -> int:
        with unavailable_as_error():
            return await self.pool.fetchval(SQL_NEW_RUN, socket.gethostname())

    async def last_seqs(self, sources: Iterable[str]) -> dict[str, int]:
        """The highest persisted seq of each source (0 if none): where its ingest resumes."""
        result = {}
        with unavailable_as_error():
            async with self.pool.acquire() as conn:
                for name in sources:
                    result[name] = await conn.fetchval(SQL_LAST_SEQ, name) or 0
        return result

    async def latest(self) -> list[Tick]:
        """The newest persisted tick of each (symbol, source), oldest first."""
        with unavailable_as_error():
            return [_tick(r) for r in await self.pool.fetch(SQL_LATEST)]

    async def write_ticks(self, ticks: Sequence[Tick]) -> None:
        """Persist a batch in one transaction; ticks already stored (same source, seq) are skipped."""
        rows = copy_rows(ticks)
        latest: dict[tuple[str, str], Tick] = {}
        for t in ticks:  # in id order, except ticks taken over from another replica's writer
            known = latest.get((t.symbol, t.source))
            if known is None or t.id > known.id:
                latest[t.symbol, t.source] = t
        # In key order: replicas' writers update the same rows, and the same order for all of them is
        # what keeps two transactions from each waiting for a row the other holds (a deadlock).
        newest = [latest[key] for key in sorted(latest)]
        columns = list(zip(*map(_latest_row, newest), strict=True))
        # The rollups take the rows this COPY inserts: its ids, and its times so a table by time prunes.
        ranges = rollup.id_ranges(t.id for t in ticks)
        times = [t.time for t in ticks]
        with unavailable_as_error():
            async with self.pool.acquire() as conn:
                try:
                    # Ingest already dropped replays, so a conflict is rare: COPY straight into the table
                    # and fall back to a staging merge only when a batch was partly stored before.
                    async with conn.transaction():
                        await conn.copy_to_table(
                            "ticks", source=_one_chunk(rows), columns=STORED_COLUMNS, schema_name=self.schema
                        )
                        await rollup.roll_up(conn, ranges, min(times), max(times))
                        await conn.execute(SQL_UPSERT_LATEST, *columns)
                except asyncpg.UniqueViolationError:
                    async with conn.transaction():
                        await conn.execute(SQL_STAGE)
                        await conn.copy_to_table("ticks_staging", source=_one_chunk(rows), columns=STORED_COLUMNS)
                        await rollup.merge_staged(conn)  # rolls up the rows it inserts, no others
                        await conn.execute(SQL_UPSERT_LATEST, *columns)

    async def record_gaps(self, gaps: Sequence[tuple[int, int, str]]) -> None:
        """Record ranges of ids (first, last, reason) that will never be in ``ticks``."""
        if not gaps:
            return
        with unavailable_as_error():
            await self.pool.execute(SQL_RECORD_GAPS, *(list(column) for column in zip(*gaps, strict=True)))

    async def set_aside(self, refused: Sequence[tuple[Tick, str]]) -> None:
        """Keep ticks PostgreSQL refused in ``rejected_ticks`` (bytes as streamed, with the error) and
        record their ids as gaps, in one transaction."""
        if not refused:
            return
        ticks = [t for t, _ in refused]
        with unavailable_as_error():
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    SQL_SET_ASIDE,
                    [t.id for t in ticks],
                    [_printable(t.source) for t in ticks],
                    [t.seq for t in ticks],
                    [t.json for t in ticks],
                    [_printable(error) for _, error in refused],
                )
                ids = [t.id for t in ticks]
                await conn.execute(SQL_RECORD_GAPS, ids, ids, ["rejected"] * len(ticks))

    async def dropped_through(self) -> int:
        """The highest id retention dropped (0 if none): a replay from below it would miss ticks."""
        with unavailable_as_error():
            return await self.pool.fetchval(SQL_DROPPED_THROUGH) or 0

    async def has_gap(self, after_id: int, before_id: int) -> bool:
        """True if a recorded gap overlaps the open interval (after_id, before_id)."""
        with unavailable_as_error():
            return await self.pool.fetchval(SQL_HAS_GAP, after_id, before_id)

    async def ticks_after(self, after_id: int, before_id: int, symbols: Sequence[str] | None, limit: int) -> list[Tick]:
        """Persisted ticks with after_id < id < before_id, in id order, at most ``limit``."""
        with unavailable_as_error():
            if symbols is None:
                rows = await self.pool.fetch(SQL_AFTER, after_id, before_id, limit)
            else:
                rows = await self.pool.fetch(SQL_AFTER_SYMBOLS, after_id, before_id, list(symbols), limit)
        return [_tick(r) for r in rows]

    async def count_after(self, after_id: int, before_id: int, symbols: Sequence[str] | None, cap: int) -> int:
        """How many ticks :meth:`ticks_after` would return without a limit, counting at most ``cap``."""
        with unavailable_as_error():
            if symbols is None:
                return await self.pool.fetchval(SQL_COUNT_AFTER, after_id, before_id, cap)
            return await self.pool.fetchval(SQL_COUNT_AFTER_SYMBOLS, after_id, before_id, list(symbols), cap)

    async def history(self, symbol: str, since: datetime | None, until: datetime | None, limit: int) -> list[Tick]:
        """Ticks of one symbol in [since, until), oldest first: the first ``limit`` after ``since``
        when it is given, else the newest ``limit`` before ``until``."""
        query = SQL_HISTORY_FORWARD if since is not None else SQL_HISTORY_NEWEST
        with unavailable_as_error():
            rows = await self.pool.fetch(query, symbol, since or TIME_MIN, until or TIME_MAX, limit)
        return [_tick(r) for r in rows]

    async def history_after(self, symbol: str, after_id: int, until: datetime | None, limit: int) -> list[Tick] | None:
        """The first ``limit`` ticks of one symbol after the tick ``after_id`` in (time, id) order, before
        ``until``; None if ``after_id`` is not a stored tick of ``symbol``."""
        with unavailable_as_error():
            async with self.pool.acquire() as conn:
                ts = await conn.fetchval(SQL_TICK_TS, after_id, symbol)
                if ts is None:
                    return None
                rows = await conn.fetch(SQL_HISTORY_AFTER, symbol, ts, after_id, until or TIME_MAX, limit)
        return [_tick(r) for r in rows]

    async def candles(
        self, symbol: str, interval: timedelta, since: datetime, until: datetime, limit: int
    ) -> list[tuple[datetime, str, str, str, str, int, str | None, int, str | None]]:
        """OHLC, tick count, volume, trade count and VWAP per ``interval`` bucket in [since, until),
        oldest first, at most the newest ``limit`` buckets; open and close follow source time, then hub
        order. Volume and VWAP are None for a bucket without a tick that carries a size. Whole minutes and
        hours come from the rollups (:mod:`tickhub.rollup`): the same answer as its raw SQL_CANDLES."""
        with unavailable_as_error():
            return await rollup.candles(self.pool, symbol, interval, since, until, limit)
