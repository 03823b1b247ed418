"""Command-line plumbing every exchange bridge shares: URL settings, common flags, serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import Awaitable
from pathlib import Path

from starlette.config import Config

from tickhub.wire import SOURCE_NAME_RE, SYMBOL_RE

from .bridge import BridgeSettings, ExchangeBridge
from .serve import SourceServer, listen_socket

log = logging.getLogger("tickhub.bridge")


def url_setting(flag_value: str | None, env_name: str, default: str, schemes: tuple[str, ...]) -> str:
    """The flag if given, else ``env_name`` from the environment or ``.env``, else ``default``.

    A bad value raises ValueError naming the flag or setting, in one line.
    """
    if flag_value:
        name, value = "--" + env_name.split("_", 2)[-1].lower().replace("_", "-"), flag_value
    else:
        env_file = Path(".env")
        value = Config(env_file if env_file.is_file() else None)(env_name, default=default).strip() or default
        name = env_name
    if not re.match(rf"^({'|'.join(schemes)})://[^\s/]+", value):
        raise ValueError(f"{name}={value!r} is invalid: must start with {' or '.join(s + '://' for s in schemes)}")
    return value.rstrip("/")


def add_bridge_arguments(
    parser: argparse.ArgumentParser, *, symbols: str, port: int, name: str, stale: float, symbols_help: str = ""
) -> None:
    """Flags every bridge has; the venue module adds its own."""
    parser.add_argument(
        "--symbols",
        default=None if symbols_help else symbols,
        help=f"comma-separated pairs as the exchange names them (default: {symbols_help or symbols})",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="port of the SSE feed (default: %(default)s)")
    parser.add_argument("--name", default=name, help="source name in the events (default: %(default)s)")
    parser.add_argument("--ws-url", default=None, help="WebSocket base URL (overrides the environment setting)")
    parser.add_argument(
        "--stale-timeout", type=float, default=stale, help="seconds without any frame before reconnecting"
    )
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to open a connection")
    parser.add_argument("--reconnect-max", type=float, default=30.0, help="largest reconnect delay in seconds")
    parser.add_argument("--ring-size", type=int, default=100_000, help="events kept for Last-Event-ID resume")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between SSE heartbeat comments")
    parser.add_argument(
        "--send-timeout", type=float, default=30.0, help="seconds a consumer may stop reading before it is dropped"
    )


def split_symbols(raw: str, venue: str) -> list[str]:
    """``btcusdt, ETHUSDT`` → native pair names, checked to make valid hub symbols."""
    symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
    if not symbols:
        raise ValueError("--symbols: give at least one pair")
    bad = [s for s in symbols if not SYMBOL_RE.match(f"{venue}:{s.replace('/', '-')}")]
    if bad:
        raise ValueError(f"--symbols: not valid pair names: {', '.join(bad)}")
    return list(dict.fromkeys(symbols))  # drop repeats, keep order


def common_settings(args: argparse.Namespace, ws_url: str, symbols: list[str]) -> dict[str, object]:
    """BridgeSettings fields taken from the common flags (checked: positive timers, valid name)."""
    if not SOURCE_NAME_RE.match(args.name):
        raise ValueError(f"--name must be a lower-case source name, got {args.name!r}")
    for flag in ("stale_timeout", "connect_timeout", "reconnect_max", "heartbeat", "send_timeout"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0")
    if args.ring_size <= 0:
        raise ValueError("--ring-size must be > 0")
    return {
        "ws_url": ws_url,
        "symbols": tuple(symbols),
        "name": args.name,
        "stale_timeout": args.stale_timeout,
        "connect_timeout": args.connect_timeout,
        "reconnect_max": max(args.reconnect_max, BridgeSettings.reconnect_min),
        "ring_size": args.ring_size,
        "heartbeat": args.heartbeat,
        "send_timeout": args.send_timeout,
    }


async def _until_stopped(work: Awaitable[object], stop: asyncio.Event) -> bool:
    """Run ``work`` until it finishes (True; its exception propagates) or ``stop`` is set (False)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True


async def serve_bridge(bridge: ExchangeBridge, host: str, port: int) -> None:
    """Check with the exchange, then serve the feed until SIGINT/SIGTERM or a refusal (raised)."""
    stop = asyncio.Event()
    server: SourceServer | None = None

    def on_signal() -> None:  # only sets flags: the work below notices them
        stop.set()
        if server is not None:
            server.request_stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with bridge:
            if not await _until_stopped(bridge.prepare(), stop):
                return
            sock = listen_socket(host, port)
            server = SourceServer(bridge.app())
            bound = sock.getsockname()[1]
            log.info("source %s serving on http://%s:%d/stream (health: /health)", bridge.settings.name, host, bound)
            serve = asyncio.ensure_future(server.serve(sockets=[sock]))
            refused = asyncio.ensure_future(bridge.failed.wait())
            try:
                await asyncio.wait({serve, refused}, return_when=asyncio.FIRST_COMPLETED)
                if not server.should_exit:
                    server.request_stop()  # the exchange refused us: stop serving too
                await serve
            finally:
                for task in (serve, refused):
                    task.cancel()
                await asyncio.gather(serve, refused, return_exceptions=True)
                sock.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if bridge.error is not None:
        raise bridge.error
