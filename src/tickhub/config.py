"""Settings: every ``TICKHUB_*`` name, its type, default and meaning, read with starlette's Config.

The table below is the single source of truth: ``.env_template`` and the README's settings
table are generated from it (``tickhub settings --template``) and a test keeps them in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from starlette.config import Config

from .instruments import COMPOSITE_SOURCE, InstrumentsError, load_instruments
from .wire import SOURCE_NAME_RE


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def _positive(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(raw: str) -> Any:
        value = cast(raw)
        if value <= 0:
            raise ValueError(f"must be > 0, got {raw!r}")
        return value

    check.__name__ = f"positive {cast.__name__}"
    return check


def _non_negative(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(raw: str) -> Any:
        value = cast(raw)
        if value < 0:
            raise ValueError(f"must be >= 0, got {raw!r}")
        return value

    check.__name__ = f"non-negative {cast.__name__}"
    return check


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0..65535, got {raw!r}")
    return value


def parse_sources(raw: str) -> tuple[tuple[str, str], ...]:
    """``name=url,name=url`` → ``(("name", "url"), ...)``; names unique, urls http(s)."""
    sources: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not SOURCE_NAME_RE.match(name):
            raise ValueError(f"expected name=url with a lower-case name, got {item!r}")
        if not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"source {name!r}: url must start with http:// or https://, got {url!r}")
        if name == COMPOSITE_SOURCE:
            raise ValueError(f"{name!r} is reserved for the hub's composite prices")
        if any(name == seen for seen, _ in sources):
            raise ValueError(f"source name {name!r} given twice")
        sources.append((name, url))
    return tuple(sources)


def _broker_url(raw: str) -> str:
    scheme = raw.partition("://")[0] if "://" in raw else ""
    if scheme not in ("memory", "redis", "rediss", "unix"):
        raise ValueError(f"expected memory:// or redis://host:port/db, got {raw[:60]!r}")
    return raw


def _schema(raw: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", raw):
        raise ValueError(f"must be a lower-case SQL identifier, got {raw!r}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"must be debug, info, warning or error, got {raw!r}")
    return level


def _lock_mode(raw: str) -> str:
    if raw not in {"local", "postgres"}:
        raise ValueError(f"must be local or postgres, got {raw!r}")
    return raw


def _fsync_mode(raw: str) -> str:
    if raw not in {"off", "batch"}:
        raise ValueError(f"must be off or batch, got {raw!r}")
    return raw


_SPAN_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
_SPAN_MAX = 36500 * 86400  # a cutoff now - span stays far inside the years datetimes can hold


def _span(raw: str) -> timedelta | None:
    """``30d``, ``12h``, ``2w``, ``90m``; empty: None (keep everything)."""
    if not raw:
        return None
    number, unit = raw[:-1], raw[-1:]
    if unit not in _SPAN_UNITS or not (number.isascii() and number.isdigit()):
        raise ValueError(f"expected a whole number and a unit m, h, d or w (e.g. 30d), got {raw!r}")
    number = number.lstrip("0")
    if not number:
        raise ValueError(f"must be above zero (leave it empty to keep everything), got {raw!r}")
    # The length first: int() of more than 4,300 digits fails with an error about Python, not the setting.
    if len(number) > 7 or int(number) * _SPAN_UNITS[unit] > _SPAN_MAX:
        raise ValueError(f"at most 100 years (36500d), got {raw!r}")
    return timedelta(seconds=int(number) * _SPAN_UNITS[unit])


def _gc_mode(raw: str) -> str:
    if raw not in {"tuned", "python"}:
        raise ValueError(f"must be tuned or python, got {raw!r}")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^\s/]+$", origin):
            raise ValueError(f"expected origins such as https://example.com or *, got {origin!r}")
    return origins


def _addresses(raw: str) -> tuple[str, ...]:
    addresses = tuple(a.strip() for a in raw.split(",") if a.strip())
    for address in (a for a in addresses if a != "*"):
        try:
            ipaddress.ip_network(address)  # uvicorn would take a mistyped one as a name that never matches
        except ValueError:
            raise ValueError(
                f"expected IP addresses or networks such as 10.0.0.5 or 10.0.0.0/8, got {address!r}"
            ) from None
    return ("*",) if "*" in addresses else addresses  # uvicorn honours * only alone


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        raise ValueError(f"must be true or false, got {raw!r}")
    return value in {"true", "1", "yes", "on"}


def _optional_str(raw: str) -> str | None:
    return raw or None


def _optional(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(raw: str) -> Any:
        return cast(raw) if raw else None

    check.__name__ = f"optional {cast.__name__}"
    return check


def _percent(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"must be a decimal number, got {raw!r}") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"must be a percentage above 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class Setting:
    field: str
    cast: Callable[[str], Any]
    default: Any
    help: str

    @property
    def name(self) -> str:
        return "TICKHUB_" + self.field.upper()

    @property
    def default_text(self) -> str:
        """The default as it is written in an environment variable."""
        default = self.default
        if default is None:
            return ""
        if isinstance(default, bool):
            return "true" if default else "false"
        if isinstance(default, tuple):
            return ",".join("=".join(item) if isinstance(item, tuple) else item for item in default)
        return str(default)


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address the hub listens on."),
    Setting("port", _port, 8000, "Port the hub listens on."),
    Setting(
        "database_url",
        _optional_str,
        None,
        "PostgreSQL DSN; empty starts an embedded PostgreSQL under TICKHUB_DATA_DIR.",
    ),
    Setting("database_schema", _schema, "public", "Schema that holds tickhub's tables (created if missing)."),
    Setting(
        "data_dir", str, ".tickhub", "Directory for the embedded database, the write-ahead log and other local state."
    ),
    Setting(
        "wal",
        _bool,
        True,
        "With memory://, write every sequenced tick to a write-ahead log under TICKHUB_DATA_DIR before it is streamed,"
        " so a crash costs subscribers nothing.",
    ),
    Setting(
        "wal_fsync",
        _fsync_mode,
        "off",
        "off: the write-ahead log survives a process crash (the page cache); batch: also power loss"
        " (fdatasync per batch).",
    ),
    Setting(
        "retention",
        _span,
        None,
        "How long ticks are kept, e.g. 30d or 12h: whole days of ticks older than this are dropped (their"
        " partitions); empty keeps everything. A resume from before the newest tick dropped gets resync too_old.",
    ),
    Setting(
        "rollup_retention",
        _span,
        None,
        "How long the one-minute and one-hour candle rollups are kept (e.g. 400d), whole days; empty keeps them."
        " They outlive the ticks they came from: set it longer than TICKHUB_RETENTION.",
    ),
    Setting(
        "gc",
        _gc_mode,
        "tuned",
        "tuned: once started, the hub freezes what start-up left alive and runs the young garbage collection"
        " every 10,000 allocations instead of 700; python: the interpreter's defaults.",
    ),
    Setting("sources", parse_sources, (), "Price sources to ingest, comma-separated name=url of their SSE streams."),
    Setting("log_level", _log_level, "info", "debug, info, warning or error."),
    Setting("heartbeat", _positive(float), 15.0, "Seconds between SSE comment heartbeats to subscribers."),
    Setting("retry_ms", _positive(int), 3000, "SSE retry: hint sent to subscribers, in milliseconds."),
    Setting("ring_size", _positive(int), 65536, "Ticks kept in memory for fan-out and fast resume."),
    Setting(
        "subscriber_backlog",
        _positive(int),
        1048576,
        "Bytes a subscriber may fall behind before it is resynced from a snapshot.",
    ),
    Setting("slow_overflows", _positive(int), 3, "Backlog overflows after which a slow subscriber is disconnected."),
    Setting(
        "slow_timeout", _positive(float), 30.0, "Seconds a subscriber may block a write before it is disconnected."
    ),
    Setting(
        "send_buffer",
        _non_negative(int),
        262144,
        "Kernel send buffer per client connection in bytes (Linux doubles it): the most a client that stopped"
        " reading pins. 256 KiB holds dozens of flushes (a few KB each) and a 1 MiB catch-up write in 4 passes;"
        " 0: autotuned, up to megabytes each.",
    ),
    Setting("max_symbols", _positive(int), 100, "Most symbols one /stream subscription may name."),
    Setting(
        "max_streams_per_client",
        _positive(int),
        500,
        "Most open /stream connections from one client address; more get 429.",
    ),
    Setting(
        "header_timeout",
        _positive(float),
        5.0,
        "Seconds a connection may take to send a whole request head, from its opening or its previous response.",
    ),
    Setting(
        "body_timeout",
        _positive(float),
        10.0,
        "Seconds a request may take to send its whole body once its head is in; slower ones get 408 and are closed.",
    ),
    Setting(
        "forwarded_allow_ips",
        _addresses,
        (),
        "Reverse proxies whose X-Forwarded-For/-Proto are trusted, comma-separated IPs or networks (* for any);"
        " empty: a client is its connection's address.",
    ),
    Setting(
        "limit_concurrency",
        _optional(_positive(int)),
        None,
        "Most open connections (streams included) before new requests get 503; empty: no limit.",
    ),
    Setting(
        "cors_origins",
        _origins,
        (),
        "Origins allowed to call the API from a browser, comma-separated (* for any); empty: same origin only.",
    ),
    Setting(
        "replay_limit",
        _positive(int),
        100000,
        "Most ticks replayed to one resuming subscriber; beyond it the subscriber is resynced.",
    ),
    Setting("history_limit", _positive(int), 10000, "Cap on the limit= of history queries."),
    Setting(
        "source_stale_timeout",
        _positive(float),
        10.0,
        "Seconds without an event or heartbeat before a source is reconnected.",
    ),
    Setting("source_connect_timeout", _positive(float), 5.0, "Seconds to connect to a source."),
    Setting("reconnect_min", _positive(float), 0.25, "First reconnect delay in seconds (doubles, jittered)."),
    Setting("reconnect_max", _positive(float), 10.0, "Largest reconnect delay in seconds."),
    Setting("source_max_line", _positive(int), 65536, "Longest SSE line accepted from a source, in bytes."),
    Setting("writer_batch", _positive(int), 50000, "Most ticks written to PostgreSQL in one COPY."),
    Setting(
        "writer_flush_interval",
        _non_negative(float),
        0.05,
        "Longest a tick waits for its batch to fill before it is written, in seconds.",
    ),
    Setting(
        "writer_backlog",
        _positive(int),
        1000000,
        "Ticks held in memory while PostgreSQL is unreachable; older ones are dropped and counted.",
    ),
    Setting(
        "writer_high_water",
        _positive(int),
        100000,
        "Ticks waiting for a reachable PostgreSQL above which ingest stops reading sources until half are written.",
    ),
    Setting(
        "broker_url",
        _broker_url,
        "memory://",
        "The log replicas share: memory:// (one process) or redis://host:port/db (Redis Streams, N replicas).",
    ),
    Setting(
        "lease_ttl",
        _positive(float),
        3.0,
        "Seconds the ingest lease lasts unrenewed; a standby replica takes over within about this long.",
    ),
    Setting(
        "stream_retention",
        _non_negative(float),
        300.0,
        "Seconds the Redis stream keeps ticks (once written to PostgreSQL) for resumes; older come from PostgreSQL.",
    ),
    Setting(
        "broker_claim_after",
        _positive(float),
        30.0,
        "Seconds after which ticks a replica was handed but never wrote are handed to another replica's writer.",
    ),
    Setting("db_pool_size", _positive(int), 10, "PostgreSQL connections in the pool."),
    Setting("db_timeout", _positive(float), 10.0, "Seconds a PostgreSQL command may take."),
    Setting("shutdown_timeout", _positive(float), 5.0, "Seconds a stopping hub waits for streams and the writer."),
    Setting("max_body", _positive(int), 65536, "Largest request body accepted, in bytes."),
    Setting("test_delay", _non_negative(float), 3.0, "Seconds GET /test holds its lock."),
    Setting(
        "test_lock",
        _lock_mode,
        "local",
        "What serializes GET /test: local (one asyncio.Lock per process) or postgres (all replicas).",
    ),
    Setting("test_wait_max", _positive(float), 300.0, "Longest a GET /test call waits for its turn (then 503)."),
    Setting(
        "quote_max_age",
        _positive(float),
        10.0,
        "Seconds a best bid or ask counts for fills: a market buy fills at the ask and a sell at the bid while the"
        " quote is younger, else at the last trade price.",
    ),
    Setting("task_timeout_max", _non_negative(float), 3600.0, "Largest timeout a task may ask for, in seconds."),
    Setting("task_queue_max", _positive(int), 1000, "Most open (pending or running) tasks; more are refused with 503."),
    Setting(
        "tasks_per_client",
        _positive(int),
        20,
        "Most open tasks of one client (its API key's account, else its address); more get 429.",
    ),
    Setting(
        "task_seconds_per_client",
        _positive(float),
        3600.0,
        "Most seconds of open task timeouts one client may hold; more get 429.",
    ),
    Setting("task_worker", _bool, True, "Whether this replica may run the task worker (one runs per database)."),
    Setting(
        "instruments",
        str,
        "",
        "TOML file of canonical instruments for composite prices; empty: the built-in map; none: no composites.",
    ),
    Setting(
        "composite_window",
        _positive(float),
        10.0,
        "Seconds a venue's price counts towards its instrument's composite.",
    ),
    Setting(
        "composite_max_deviation",
        _percent,
        Decimal("1.0"),
        "Percent a venue's price may deviate from the median of the fresh venues before it is excluded.",
    ),
)


#: Read by the exchange bridges (``tickhub source binance|coinbase|kraken``), not by the hub: (name,
#: default, help). sources/ cannot import this module; a test keeps these defaults equal to theirs.
BRIDGE_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("TICKHUB_BINANCE_WS_URL", "wss://stream.binance.com:9443", "Binance WebSocket streams base URL."),
    ("TICKHUB_BINANCE_REST_URL", "https://api.binance.com", "Binance REST API base URL."),
    ("TICKHUB_COINBASE_WS_URL", "wss://ws-feed.exchange.coinbase.com", "Coinbase Exchange WebSocket feed URL."),
    ("TICKHUB_KRAKEN_WS_URL", "wss://ws.kraken.com/v2", "Kraken WebSocket v2 URL."),
)


@dataclass(frozen=True)
class Settings:
    """Validated settings of one hub process."""

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    database_schema: str = "public"
    data_dir: str = ".tickhub"
    wal: bool = True
    wal_fsync: str = "off"
    gc: str = "tuned"
    retention: timedelta | None = None
    rollup_retention: timedelta | None = None
    sources: tuple[tuple[str, str], ...] = ()
    log_level: str = "info"
    heartbeat: float = 15.0
    retry_ms: int = 3000
    ring_size: int = 65536
    subscriber_backlog: int = 1048576
    slow_overflows: int = 3
    slow_timeout: float = 30.0
    send_buffer: int = 262144
    max_symbols: int = 100
    max_streams_per_client: int = 500
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    forwarded_allow_ips: tuple[str, ...] = ()
    limit_concurrency: int | None = None
    cors_origins: tuple[str, ...] = ()
    replay_limit: int = 100000
    history_limit: int = 10000
    source_stale_timeout: float = 10.0
    source_connect_timeout: float = 5.0
    reconnect_min: float = 0.25
    reconnect_max: float = 10.0
    source_max_line: int = 65536
    writer_batch: int = 50000
    writer_flush_interval: float = 0.05
    writer_backlog: int = 1000000
    writer_high_water: int = 100000
    broker_url: str = "memory://"
    lease_ttl: float = 3.0
    stream_retention: float = 300.0
    broker_claim_after: float = 30.0
    db_pool_size: int = 10
    db_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    max_body: int = 65536
    test_delay: float = 3.0
    test_lock: str = "local"
    test_wait_max: float = 300.0
    quote_max_age: float = 10.0
    task_timeout_max: float = 3600.0
    task_queue_max: int = 1000
    tasks_per_client: int = 20
    task_seconds_per_client: float = 3600.0
    task_worker: bool = True
    instruments: str = ""
    composite_window: float = 10.0
    composite_max_deviation: Decimal = Decimal("1.0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
        """Read every setting from the environment and ``.env``; raise SettingsError naming a bad one."""
        env_path = Path(env_file) if env_file is not None else None
        config = Config(
            env_path if env_path is not None and env_path.is_file() else None,
            environ=os.environ if environ is None else environ,
        )
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = config(setting.name, default=None)
            if raw is None:
                continue
            try:
                values[setting.field] = setting.cast(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{setting.name}={raw!r} is invalid: {exc}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.reconnect_min > self.reconnect_max:
            raise SettingsError("TICKHUB_RECONNECT_MIN must not exceed TICKHUB_RECONNECT_MAX")
        if self.writer_high_water * 2 > self.writer_backlog:
            # Ingest finishes the chunk it is reading before it pauses: the backlog needs room above the high
            # water, or ticks are dropped while PostgreSQL is healthy.
            raise SettingsError("TICKHUB_WRITER_HIGH_WATER must be at most half of TICKHUB_WRITER_BACKLOG")
        if self.rollup_retention is not None and (self.retention is None or self.rollup_retention < self.retention):
            # Candles of minutes whose rollups are gone would come out empty while their ticks are still kept.
            raise SettingsError(
                "TICKHUB_ROLLUP_RETENTION must be at least TICKHUB_RETENTION (and needs one): candles must not "
                "lose minutes whose ticks are kept"
            )
        try:
            load_instruments(self.instruments)
        except InstrumentsError as exc:
            raise SettingsError(f"TICKHUB_INSTRUMENTS={self.instruments!r} is invalid: {exc}") from None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_template() -> str:
    """The text of ``.env_template``: every setting with its default and one comment line."""
    lines = ["# tickhub settings: copy to .env and edit. Every name, its default and what it does."]
    for setting in SETTINGS:
        default = setting.default
        lines += ["", f"# {setting.help}", f"{setting.name}={setting.default_text}"]
    lines += ["", "# --- exchange bridges (tickhub source binance|coinbase|kraken) ---"]
    for name, default, help in BRIDGE_SETTINGS:
        lines += ["", f"# {help}", f"{name}={default}"]
    return "\n".join(lines) + "\n"
