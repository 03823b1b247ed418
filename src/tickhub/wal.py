"""The write-ahead log of a single-process hub: every sequenced tick on local disk before anyone sees it.

With ``memory://`` the broker's log lives in the hub's memory, so a crash (SIGKILL, OOM) lost the
ticks it had streamed and not yet written to PostgreSQL; they came again from their sources under
new ids. Now each batch the broker appends is first written here, one ``write()`` per batch, as the
same text rows the COPY writer sends. On start the ticks beyond PostgreSQL's newest id go back into
the log with their original ids: the writer stores them, the sources resume after them, and a
subscriber resuming from an id sent before the crash goes on with no duplicate and no gap. (With
``redis://`` the Redis stream plays this part.)

A record is ``length (u32) | crc32 (u32) | rows``. A process killed mid-write leaves a torn last
record: its length runs past the end of the file or its checksum fails, and it is dropped, never
misread (nobody saw its ticks: delivery waits for the write). Segments are files named by their
first id, rotated at ``segment_bytes`` and deleted once every tick in them is in PostgreSQL.

``fsync=False`` (TICKHUB_WAL_FSYNC=off) survives a process crash: the page cache outlives the
process. ``fsync=True`` (batch) also survives power loss, at the cost of an fdatasync per batch,
done off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from .store import STORED_COLUMNS, copy_rows
from .wire import NO_FIELDS_ROW, Tick, TickFields, check_trade_id

log = logging.getLogger("tickhub.wal")

HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
SEGMENT_BYTES = 16 << 20
SUFFIX = ".wal"
ROW_COLUMNS = len(STORED_COLUMNS)
_NO_FIELDS = NO_FIELDS_ROW.split(b"\t")


class WalInUse(OSError):
    """Another process holds this write-ahead log."""


class CorruptRecord(ValueError):
    """A record whose checksum held but whose rows do not read back as ticks."""


def encode(ticks: Sequence[Tick]) -> bytes:
    """One record: the ticks as COPY text rows behind their length and checksum."""
    payload = copy_rows(ticks)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def parse_rows(payload: bytes) -> list[Tick]:
    """The ticks of :func:`tickhub.store.copy_rows` text, byte for byte the same JSON again.

    Rows of 14 columns are today's; rows of 7 (id … seq, extra) were written before ticks had their
    optional fields, when an exchange's ``trade_id`` was kept in extra: it is read back as the field,
    and the tick's JSON is the same bytes (the field followed ``seq`` then too)."""
    ticks = []
    for line in payload.split(b"\n")[:-1]:
        fields = line.split(b"\t")
        if len(fields) not in (ROW_COLUMNS, 7):
            raise CorruptRecord(f"a row of {len(fields)} fields")
        tick_id, source, symbol, price, ts, seq, *optional, extra = fields
        extra_obj = None if extra == b"\\N" else orjson.loads(extra.replace(b"\\\\", b"\\"))
        tick_fields = None
        if optional and optional != _NO_FIELDS:
            tick_fields = TickFields.of(*(None if v == b"\\N" else v.decode() for v in optional))
        elif extra_obj and "trade_id" in extra_obj:  # a row of 7
            tick_fields = TickFields.of(trade_id=check_trade_id(extra_obj.pop("trade_id")))
        ts_text = ts.decode()
        try:
            time = datetime.fromisoformat(ts_text)
        except ValueError as exc:
            raise CorruptRecord(str(exc)) from None
        ticks.append(
            Tick(
                int(tick_id),
                source.decode(),
                symbol.decode(),
                price.decode(),
                time,
                int(seq),
                ts_text,
                extra_obj,
                tick_fields,
            )
        )
    return ticks


@dataclass
class Segment:
    path: Path
    first_id: int
    last_id: int
    size: int


class WriteAheadLog:
    """Segment files under ``directory``; :meth:`open` once, then :meth:`append` and :meth:`release`."""

    def __init__(self, directory: str | Path, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the segment being appended to: the last of ``segments``
        self._lock: int | None = None  # an flock on directory/LOCK while this process has the log open
        self.opened = False
        #: Figures for /health.
        self.appended = 0
        self.torn = 0
        self.corrupt = 0

    # -- start -----------------------------------------------------------------------------------

    def open(self) -> list[Tick]:
        """Read every segment in id order and return its ticks; a torn or corrupt record ends its
        segment (the file is cut there). Appends go to a new segment. Raises :class:`WalInUse` if
        another process has this log open (two hubs on one data directory and schema)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise WalInUse(f"{self.directory} is in use by another hub process") from None
        ticks: list[Tick] = []
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            found = self._read_segment(path)
            if found:
                self.segments.append(Segment(path, found[0].id, found[-1].id, path.stat().st_size))
                ticks.extend(found)
            else:
                path.unlink()
        self.opened = True
        return ticks

    def _read_segment(self, path: Path) -> list[Tick]:
        data = path.read_bytes()
        ticks: list[Tick] = []
        pos = 0
        while pos < len(data):
            if pos + HEADER.size > len(data):
                break
            length, crc = HEADER.unpack_from(data, pos)
            payload = data[pos + HEADER.size : pos + HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            try:
                ticks.extend(parse_rows(payload))
            except (CorruptRecord, ValueError) as exc:
                self.corrupt += 1
                log.error("%s: a record at byte %d does not read back (%s); the segment ends there", path, pos, exc)
                break
            pos += HEADER.size + length
        if pos < len(data):
            self.torn += 1
            log.warning("%s: dropped a torn record (%d bytes at byte %d)", path, len(data) - pos, pos)
            os.truncate(path, pos)
        return ticks

    # -- running ---------------------------------------------------------------------------------

    async def append(self, ticks: Sequence[Tick]) -> None:
        """Write one batch as one record (one ``write()``); with ``fsync``, wait for it to be on disk."""
        if not ticks:
            return
        record = encode(ticks)
        segment = self._current(ticks[0].id)
        fd = self._fd
        assert fd is not None
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # a full disk mid-record: cut it off, so the records after the retry read back
            with contextlib.suppress(OSError):
                os.ftruncate(fd, segment.size)
            raise
        segment.last_id = ticks[-1].id
        segment.size += len(record)
        self.appended += 1
        if self.fsync:
            await asyncio.to_thread(os.fdatasync, fd)

    def _current(self, first_id: int) -> Segment:
        if self._fd is not None and self.segments[-1].size < self.segment_bytes:
            return self.segments[-1]
        self._close_fd()
        path = self.directory / f"{first_id:020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = Segment(path, first_id, first_id - 1, 0)
        self.segments.append(segment)
        return segment

    def release(self, written_id: int) -> None:
        """Every tick up to ``written_id`` is in PostgreSQL: delete the segments holding nothing newer
        (the one being appended to stays until it is full)."""
        segments = self.segments
        while segments and segments[0].last_id <= written_id and (self._fd is None or len(segments) > 1):
            segment = segments.pop(0)
            segment.path.unlink(missing_ok=True)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self, written_id: int | None = None) -> None:
        """Close the open segment; with ``written_id``, delete every segment PostgreSQL has in full."""
        self._close_fd()
        if written_id is not None:
            self.release(written_id)
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
        self.opened = False

    def health(self) -> dict[str, object]:
        return {
            "fsync": "batch" if self.fsync else "off",
            "segments": len(self.segments),
            "bytes": sum(s.size for s in self.segments),
            "records_appended": self.appended,
            "torn_dropped": self.torn,
            "corrupt": self.corrupt,
        }
