"""The write-ahead log: records read back byte for byte, a torn or corrupt tail is dropped and never
misread, segments go once PostgreSQL has them, and the memory broker restores what a crash left."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickhub.broker_memory import _LOGS, MemoryBroker
from tickhub.wal import HEADER, WriteAheadLog, encode
from tickhub.wire import Tick, TickFields

BASE = 5 * 10**12


def tick(n: int, symbol: str = "BTCUSD", extra: dict | None = None, fields: TickFields | None = None) -> Tick:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    return Tick(BASE + n, "mock", symbol, f"{100 + n}.25", at, 1000 + n, None, extra, fields)


SOME_FIELDS = [
    None,
    TickFields.of(qty="0.5", side="buy", trade_id="7", bid="1.10", bid_qty="0", ask="1.20", ask_qty="3"),
    TickFields.of(bid="99.5", ask="100.0"),
    TickFields.of(trade_id="a-B_9"),
]


def batches(ticks: list[Tick], size: int) -> list[list[Tick]]:
    return [ticks[i : i + size] for i in range(0, len(ticks), size)]


def append(wal: WriteAheadLog, *records: list[Tick]) -> None:
    for record in records:
        asyncio.run(wal.append(record))


def test_records_read_back_byte_for_byte(tmp_path: Path) -> None:
    ticks = [
        tick(
            n,
            extra={"venues": [{"source": "a\\b", "price": "1"}]} if n % 3 == 0 else None,
            fields=SOME_FIELDS[n % len(SOME_FIELDS)],
        )
        for n in range(1, 50)
    ]
    wal = WriteAheadLog(tmp_path)
    assert wal.open() == []
    append(wal, *batches(ticks, 7))
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert [t.json for t in again.open()] == [t.json for t in ticks]
    assert again.torn == 0 and again.corrupt == 0


def test_records_written_before_ticks_had_optional_fields_still_read_back(tmp_path: Path) -> None:
    """A log left by the version before the optional fields: rows of 7 columns (id … seq, extra), an
    exchange's trade id inside extra. They read back as ticks whose JSON is the bytes streamed then."""
    streamed = [
        b'{"id":"5000000000001","source":"mock","symbol":"BTCUSD","price":"101.25","ts":"2026-12-01T00:00:00.000000Z","seq":1001}',
        b'{"id":"5000000000002","source":"binance","symbol":"BINANCE:BTCUSDT","price":"43211.01000000",'
        b'"ts":"2026-12-01T00:00:00.000000Z","seq":1002,"trade_id":"3512345678"}',
        b'{"id":"5000000000003","source":"composite","symbol":"BTC-USD","price":"7","ts":"2026-12-01T00:00:00.000000Z",'
        b'"seq":1003,"venues":[{"price":"7","source":"a\\\\b"}]}',
    ]
    rows = (
        b"5000000000001\tmock\tBTCUSD\t101.25\t2026-12-01T00:00:00.000000Z\t1001\t\\N\n"
        b"5000000000002\tbinance\tBINANCE:BTCUSDT\t43211.01000000\t2026-12-01T00:00:00.000000Z\t1002\t"
        b'{"trade_id":"3512345678"}\n'
        b"5000000000003\tcomposite\tBTC-USD\t7\t2026-12-01T00:00:00.000000Z\t1003\t"
        b'{"venues":[{"price":"7","source":"a\\\\\\\\b"}]}\n'
    )
    (tmp_path / f"{5000000000001:020d}.wal").write_bytes(HEADER.pack(len(rows), zlib.crc32(rows)) + rows)
    wal = WriteAheadLog(tmp_path)
    ticks = wal.open()
    assert [t.json for t in ticks] == streamed
    assert ticks[1].fields == TickFields.of(trade_id="3512345678") and ticks[1].extra is None
    assert wal.corrupt == 0 and wal.torn == 0


@settings(max_examples=60, deadline=None, database=None)
@given(cut=st.integers(min_value=1, max_value=400), garbage=st.binary(max_size=30))
def test_a_torn_last_record_is_dropped_and_nothing_before_it_is_lost(cut: int, garbage: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        wal = WriteAheadLog(directory)
        wal.open()
        first, last = [tick(n) for n in range(1, 6)], [tick(n) for n in range(6, 11)]
        append(wal, first, last)
        wal.close()
        (path,) = Path(directory).glob("*.wal")
        whole = path.stat().st_size
        cut = min(cut, len(encode(last)) - 1)  # the process died inside the last write
        with open(path, "r+b") as f:
            f.truncate(whole - cut)
            f.seek(0, os.SEEK_END)
            f.write(garbage[: cut - 1] if cut > 1 else b"")
        again = WriteAheadLog(directory)
        assert [t.json for t in again.open()] == [t.json for t in first]
        assert again.torn == 1
        append(again, [tick(11)])  # appending goes on after the cut
        again.close()
        assert [t.id for t in WriteAheadLog(directory).open()] == [t.id for t in [*first, tick(11)]]


def test_a_record_whose_checksum_fails_is_dropped_with_what_follows_in_its_segment(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    append(wal, [tick(1), tick(2)], [tick(3)])
    wal.close()
    (path,) = tmp_path.glob("*.wal")
    data = bytearray(path.read_bytes())
    second = len(encode([tick(1), tick(2)]))
    data[second + HEADER.size + 3] ^= 0x01  # one bit of the second record's rows
    path.write_bytes(bytes(data))
    again = WriteAheadLog(tmp_path)
    assert [t.id for t in again.open()] == [BASE + 1, BASE + 2]
    assert again.torn == 1


def test_a_record_whose_length_lies_is_never_read_past_the_end(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    append(wal, [tick(1)])
    wal.close()
    (path,) = tmp_path.glob("*.wal")
    with open(path, "ab") as f:
        f.write(struct.pack("<II", 1 << 30, 0) + b"x" * 10)
    again = WriteAheadLog(tmp_path)
    assert [t.id for t in again.open()] == [BASE + 1]


def test_segments_rotate_and_go_once_postgresql_has_them(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=500)
    wal.open()
    ticks = [tick(n) for n in range(1, 41)]
    append(wal, *batches(ticks, 4))
    assert len(wal.segments) > 3
    wal.release(BASE + 20)
    assert all(s.last_id > BASE + 20 for s in wal.segments)
    assert sorted(tmp_path.glob("*.wal")) == [s.path for s in wal.segments], "and their files with them"
    wal.release(BASE + 40)
    assert len(wal.segments) == 1, "the segment being written stays until it is full"
    wal.close(written_id=BASE + 40)
    assert list(tmp_path.glob("*.wal")) == []


def test_fsync_batch_appends_and_reads_back(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, fsync=True)
    wal.open()
    append(wal, [tick(1), tick(2)])
    wal.close()
    assert [t.id for t in WriteAheadLog(tmp_path).open()] == [BASE + 1, BASE + 2]


async def test_the_memory_broker_restores_what_postgresql_lacks_after_a_crash(tmp_path: Path) -> None:
    url, namespace = "memory://", "wal_restore"
    broker = MemoryBroker(url, namespace, wal_dir=tmp_path)
    await broker.connect()
    assert await broker.restore(0) == 0
    assert await broker.acquire("a", 10)
    delivered: list[int] = []
    await broker.subscribe(lambda ts: delivered.extend(t.id for t in ts), 0)
    for batch in batches([tick(n) for n in range(1, 21)], 5):
        await broker.append("a", batch)
    assert delivered == [BASE + n for n in range(1, 21)]
    crashed = _LOGS.pop((url, namespace))  # the process dies: nothing flushed, its files closed by the kernel
    crashed.wal.close()
    written: list[list[int]] = []
    again = MemoryBroker(url, namespace, wal_dir=tmp_path)
    await again.connect()
    assert await again.restore(BASE + 12) == 8  # PostgreSQL had up to the 12th
    assert await again.last_seqs() == {"mock": 1020}
    seen: list[int] = []
    await again.subscribe(lambda ts: seen.extend(t.id for t in ts), BASE + 12)
    await again.feed_writer("w", lambda ts: written.append([t.id for t in ts]), None)  # type: ignore[arg-type]
    assert seen == [BASE + n for n in range(13, 21)], "the restored ticks reach readers with their ids"
    assert written == [seen], "and the writer"
    assert await again.acquire("b", 10)
    assert await again.append("b", [tick(15)]) == 0, "a restored tick is not appended twice"
    await again.written("w", [tick(n) for n in range(13, 21)])
    await again.close()
    await broker.close()


@pytest.mark.parametrize("persisted", [0, BASE + 20])
async def test_nothing_to_restore_leaves_the_log_empty(tmp_path: Path, persisted: int) -> None:
    wal = WriteAheadLog(tmp_path / "n")
    wal.open()
    await wal.append([tick(n) for n in range(1, 21)])
    wal.close()
    broker = MemoryBroker("memory://", "n", wal_dir=tmp_path)
    await broker.connect()
    assert await broker.restore(persisted) == (20 if persisted == 0 else 0)
    await broker.close()
    _LOGS.pop(("memory://", "n"), None)


def test_a_second_process_cannot_open_the_same_log(tmp_path: Path) -> None:
    import subprocess
    import sys

    wal = WriteAheadLog(tmp_path)
    wal.open()
    code = (
        "from tickhub.wal import WriteAheadLog, WalInUse\n"
        "try:\n    WriteAheadLog(%r).open()\nexcept WalInUse:\n    raise SystemExit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code % str(tmp_path)], check=False)
    assert result.returncode == 3
    wal.close()
    assert subprocess.run([sys.executable, "-c", code % str(tmp_path)], check=False).returncode == 0
