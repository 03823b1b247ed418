"""``tickhub tail``: follow the hub from a terminal, a line per tick, on the synchronous client.

By default a readable line (time, symbol, price, an arrow for the change since the symbol's last
tick, source); with ``--json`` the tick's JSON, one object a line, for ``jq``. Snapshots and resyncs
are told on stderr, so stdout holds ticks only. It resumes across hub restarts like any client of
tickhub.client, and Ctrl-C exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal
from typing import TextIO

import orjson

from .client import HubError, Snapshot, Tick, subscribe_sync


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", nargs="?", default=None, help="hub URL (default: $TICKHUB_HUB_URL or http://127.0.0.1:8000)"
    )
    parser.add_argument("--symbols", default=None, help="comma-separated symbols (default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON object per tick and line (for jq)")
    parser.add_argument("--since", default=None, metavar="ID", help="start after this tick id (the Last-Event-ID)")
    parser.add_argument("--log-level", default="info", help="reconnects are logged at info (default info)")


class TickLines:
    """Formats ticks as lines: JSON, or time, symbol, price and change arrow."""

    def __init__(self, json: bool, encoding: str | None) -> None:
        self.json = json
        self.last: dict[str, Decimal] = {}
        try:
            "▲▼".encode(encoding or "ascii")
            self.up, self.down = "▲", "▼"
        except (UnicodeEncodeError, LookupError):  # a terminal that cannot show them
            self.up, self.down = "^", "v"

    def line(self, tick: Tick) -> str:
        if self.json:
            return orjson.dumps(dict(tick.raw)).decode()
        before = self.last.get(tick.symbol)
        self.last[tick.symbol] = tick.price
        arrow = " " if before is None else self.up if tick.price > before else self.down if tick.price < before else "="
        return f"{tick.ts[11:23]}  {tick.symbol:<12} {tick.price_text:>16} {arrow}  {tick.source}"


def follow(url: str, symbols: list[str] | None, since: str | None, lines: TickLines, out: TextIO) -> None:
    """Write a line per tick to ``out`` until interrupted; snapshots are told on stderr."""
    with subscribe_sync(url, symbols, since) as stream:
        for event in stream:
            if isinstance(event, Snapshot):
                why = f"resync ({event.resync}): " if event.resync else ""
                where = f" at id {event.id}" if event.id else ""
                print(f"{why}snapshot of {len(event.ticks)} symbols{where}", file=sys.stderr)
                ticks: tuple[Tick, ...] = event.new
            else:
                ticks = (event,)
            for tick in ticks:
                out.write(lines.line(tick) + "\n")
            out.flush()  # a pipe is block-buffered: jq should see each tick as it comes


def main(args: argparse.Namespace) -> int:
    """``tickhub tail``: 0 on Ctrl-C or a closed pipe, 1 if the hub refuses the subscription."""
    url = args.url or os.environ.get("TICKHUB_HUB_URL", "http://127.0.0.1:8000")
    symbols = [s for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    try:
        follow(url, symbols, args.since, TickLines(args.json, sys.stdout.encoding), sys.stdout)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `tickhub tail | head`: the reader has gone, which is the way to stop
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except HubError as exc:
        print(f"tickhub tail: {exc}", file=sys.stderr)
        return 1
    return 0
