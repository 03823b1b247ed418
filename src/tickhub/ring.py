"""TickRing: the last N ticks as ready-to-send SSE frames, shared by every subscriber."""

from __future__ import annotations

from collections.abc import Container


class TickRing:
    """A fixed-capacity ring of encoded frames addressed by absolute position.

    Positions count every frame ever appended (``head`` is the next one); frames older than
    ``start`` are gone. Each slot also keeps the tick's id and symbol (for resume and filters)
    and the running byte total before it (for a subscriber's backlog in bytes).
    """

    __slots__ = ("_frames", "_ids", "_offsets", "_symbols", "bytes_total", "capacity", "head", "start")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity = capacity
        self._frames: list[bytes] = [b""] * capacity
        self._symbols: list[str] = [""] * capacity
        self._ids: list[int] = [0] * capacity
        self._offsets: list[int] = [0] * capacity
        self.start = 0
        self.head = 0
        self.bytes_total = 0

    def __len__(self) -> int:
        return self.head - self.start

    def append(self, tick_id: int, symbol: str, frame: bytes) -> None:
        i = self.head % self.capacity
        self._frames[i] = frame
        self._symbols[i] = symbol
        self._ids[i] = tick_id
        self._offsets[i] = self.bytes_total
        self.bytes_total += len(frame)
        self.head += 1
        if self.head - self.start > self.capacity:
            self.start += 1

    def clear(self) -> None:
        """Forget every frame (positions keep counting): what follows is not continuous with them."""
        self.start = self.head

    @property
    def first_id(self) -> int | None:
        return self._ids[self.start % self.capacity] if self.head > self.start else None

    @property
    def last_id(self) -> int | None:
        return self._ids[(self.head - 1) % self.capacity] if self.head > self.start else None

    def id_at(self, position: int) -> int:
        return self._ids[position % self.capacity]

    def backlog_bytes(self, position: int) -> int:
        """Bytes between ``position`` and the head (all symbols counted)."""
        if position >= self.head:
            return 0
        return self.bytes_total - self._offsets[max(position, self.start) % self.capacity]

    def position_after(self, tick_id: int) -> int:
        """The first retained position whose id is greater than ``tick_id`` (``head`` if none)."""
        low, high = self.start, self.head
        ids, cap = self._ids, self.capacity
        while low < high:
            mid = (low + high) // 2
            if ids[mid % cap] <= tick_id:
                low = mid + 1
            else:
                high = mid
        return low

    def collect(self, low: int, high: int, symbols: Container[str] | None = None) -> bytes:
        """The frames in [low, high) joined into one write, optionally only those of ``symbols``.

        ``low`` must not be older than ``start`` (the caller resyncs such a subscriber).
        """
        return self.collect_counted(low, high, symbols)[0]

    def collect_counted(self, low: int, high: int, symbols: Container[str] | None = None) -> tuple[bytes, int]:
        """Like :meth:`collect`, and how many frames the write holds."""
        n = high - low
        if n <= 0:
            return b"", 0
        if low < self.start:
            raise IndexError("position already evicted from the ring")
        cap = self.capacity
        a = low % cap
        if a + n <= cap:
            frames = self._frames[a : a + n]
            if symbols is None:
                return b"".join(frames), n
            names = self._symbols[a : a + n]
        else:
            b = a + n - cap
            frames = self._frames[a:] + self._frames[:b]
            if symbols is None:
                return b"".join(frames), n
            names = self._symbols[a:] + self._symbols[:b]
        chosen = [f for f, s in zip(frames, names, strict=True) if s in symbols]
        return b"".join(chosen), len(chosen)
