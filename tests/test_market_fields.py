"""A tick's optional fields in PostgreSQL: their columns, the migration that made them (trade ids out of
extra, every row kept), byte-identical reads, and candles with volume, trade count and VWAP."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from tickhub.store import STORED_COLUMNS, Store, migrations
from tickhub.wire import OPTIONAL_FIELDS, Tick, TickFields

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FIRST = 1_000_000_000_001


def tick(n: int, price: str, fields: TickFields | None = None, at: datetime = T0, symbol: str = "BTCUSD") -> Tick:
    return Tick(FIRST + n, "s", symbol, price, at, n + 1, None, None, fields)


async def test_every_field_is_a_column_and_reads_back_as_the_same_bytes(database_url: str, schema: str) -> None:
    fields = [
        TickFields.of("0.00150000", "sell", "3512345678", "43211.00000000", "0.000", "43211.01000000", "2.50"),
        TickFields.of(bid="43211.5", bid_qty="0", ask="43212"),  # a quote update, no trade
        TickFields.of(qty="1", side="buy"),
        None,
    ]
    ticks = [tick(n, "43211.01000000", f) for n, f in enumerate(fields)]
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks(ticks)
        rows = await store.pool.fetch(
            "SELECT qty::text, side, trade_id, bid::text, bid_qty::text, ask::text, ask_qty::text"
            " FROM ticks ORDER BY id"
        )
        assert [tuple(r) for r in rows] == [f.values() if f else (None,) * 7 for f in fields]
        assert [t.json for t in await store.history("BTCUSD", None, None, 10)] == [t.json for t in ticks]
        assert [t.json for t in await store.ticks_after(0, 1 << 62, None, 10)] == [t.json for t in ticks]
        (latest,) = await store.latest()
        assert latest.json == ticks[-1].json
        await store.write_ticks([tick(9, "43212", fields[0])])
        (latest,) = await store.latest()
        assert latest.fields == fields[0], "latest_ticks takes every field of the newer tick"
    finally:
        await store.close()


async def test_the_migration_moves_trade_ids_out_of_extra_and_keeps_every_row(database_url: str, schema: str) -> None:
    """A database of the version before the fields: trade ids in ``extra``. After the migration each is in
    its column, extra keeps anything else (NULL when nothing is left), and every tick reads back as the
    bytes it was streamed as."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz)")
        before = [(v, sql) for v, sql in migrations() if v < "0007"]
        for version, sql in before:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, now())", version)
        rows = [
            (FIRST, "binance", "BINANCE:BTCUSDT", "43211.01000000", 1, '{"trade_id": "3512345678"}'),
            (FIRST + 1, "mock", "BTCUSD", "43000.00", 2, None),
            (FIRST + 2, "composite", "BTC-USD", "43000.5", 3, '{"venues": [{"price": "1", "source": "a"}]}'),
            (FIRST + 3, "coinbase", "X", "7", 4, '{"trade_id": "t-1", "venues": []}'),
        ]
        for id, source, symbol, price, seq, extra in rows:
            await conn.execute(
                "INSERT INTO ticks (id, source, symbol, price, ts, seq, extra) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                id,
                source,
                symbol,
                Decimal(price),
                T0,
                seq,
                extra,
            )
        await conn.execute(
            "INSERT INTO latest_ticks (symbol, source, id, price, ts, seq, extra) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            "BINANCE:BTCUSDT",
            "binance",
            FIRST,
            Decimal("43211.01000000"),
            T0,
            1,
            '{"trade_id": "3512345678"}',
        )
    finally:
        await conn.close()

    store = await Store.open(database_url, schema)
    try:
        moved = await store.pool.fetch("SELECT trade_id, extra::text FROM ticks ORDER BY id")
        assert [tuple(r) for r in moved] == [
            ("3512345678", None),
            (None, None),
            (None, '{"venues": [{"price": "1", "source": "a"}]}'),
            ("t-1", '{"venues": []}'),
        ]
        ts = "2026-11-23T10:00:00.000000Z"
        streamed = [  # the JSON the version before streamed for these rows (extra's keys sorted, after seq)
            f'{{"id":"{FIRST}","source":"binance","symbol":"BINANCE:BTCUSDT","price":"43211.01000000",'
            f'"ts":"{ts}","seq":1,"trade_id":"3512345678"}}',
            f'{{"id":"{FIRST + 1}","source":"mock","symbol":"BTCUSD","price":"43000.00","ts":"{ts}","seq":2}}',
            f'{{"id":"{FIRST + 2}","source":"composite","symbol":"BTC-USD","price":"43000.5","ts":"{ts}","seq":3,'
            f'"venues":[{{"price":"1","source":"a"}}]}}',
            f'{{"id":"{FIRST + 3}","source":"coinbase","symbol":"X","price":"7","ts":"{ts}","seq":4,'
            f'"trade_id":"t-1","venues":[]}}',
        ]
        assert [t.json.decode() for t in await store.ticks_after(0, 1 << 62, None, 10)] == streamed
        (latest,) = await store.latest()
        assert latest.json.decode() == streamed[0] and latest.fields == TickFields.of(trade_id="3512345678")
    finally:
        await store.close()


def exact_vwap(trades: list[tuple[Decimal, Decimal]]) -> str:
    volume = sum(q for _, q in trades)
    vwap = (sum(p * q for p, q in trades) / volume).quantize(Decimal(10) ** -18, ROUND_HALF_UP)
    text = format(vwap, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


async def test_candles_carry_volume_trade_count_and_vwap_from_the_sizes(database_url: str, schema: str) -> None:
    """Volume is the sum of the sizes in each bucket, exactly; quote updates count as ticks, not trades;
    a bucket without a size has no volume and no VWAP."""
    rng = random.Random(20)
    ticks: list[Tick] = []
    trades: dict[int, list[tuple[Decimal, Decimal]]] = {0: [], 1: []}
    for n in range(40):
        minute = n % 2
        at = T0 + timedelta(minutes=minute, seconds=n)
        price = f"{rng.randint(4_300_000, 4_310_000) / 100:.2f}"
        if n % 5 == 0:  # a quote update between trades: the last trade price, no size
            ticks.append(tick(n, price, TickFields.of(bid="43000", bid_qty="1", ask="43100", ask_qty="0"), at))
            continue
        qty = f"0.{rng.randint(1, 99999999):08d}"
        ticks.append(tick(n, price, TickFields.of(qty=qty, side=rng.choice(["buy", "sell"])), at))
        trades[minute].append((Decimal(price), Decimal(qty)))
    ticks.append(tick(40, "43000.00", None, T0 + timedelta(minutes=2)))  # a source without sizes
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks(ticks)
        candles = await store.candles("BTCUSD", timedelta(minutes=1), T0, T0 + timedelta(minutes=3), 10)
    finally:
        await store.close()
    assert [(c[5], c[7]) for c in candles] == [(20, 16), (20, 16), (1, 0)], "count, trades"
    for minute in (0, 1):
        volume, vwap = candles[minute][6], candles[minute][8]
        assert Decimal(volume) == sum(q for _, q in trades[minute]), "volume is the sum of the sizes"
        assert volume == format(sum(q for _, q in trades[minute]), "f"), "exactly, as a decimal string"
        assert vwap == exact_vwap(trades[minute])
    assert candles[2][6:] == (None, 0, None), "no size in the bucket: no volume, no VWAP"


async def test_vwap_of_prices_with_many_places_is_rounded_to_18(database_url: str, schema: str) -> None:
    fields = [TickFields.of(qty="3"), TickFields.of(qty="0.000000000000000007")]
    ticks = [tick(0, "1", fields[0]), tick(1, "2.000000000000000001", fields[1])]
    store = await Store.open(database_url, schema)
    try:
        await store.write_ticks(ticks)
        [candle] = await store.candles("BTCUSD", timedelta(hours=1), T0, T0 + timedelta(hours=1), 1)
    finally:
        await store.close()
    trades = [(Decimal("1"), Decimal("3")), (Decimal("2.000000000000000001"), Decimal("0.000000000000000007"))]
    assert candle[6:] == ("3.000000000000000007", 2, exact_vwap(trades))
    assert len(candle[8].split(".")[1]) == 18


def test_the_optional_columns_follow_the_wire_order() -> None:
    assert STORED_COLUMNS == ("id", "source", "symbol", "price", "ts", "seq", *OPTIONAL_FIELDS, "extra")
