"""The ``tickhub`` command: hub, sources, demo and helpers."""

from __future__ import annotations

import argparse
import logging
import sys

from . import aio
from .config import SETTINGS, Settings, SettingsError, env_template


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def cmd_hub(args: argparse.Namespace) -> int:
    from .embedded import database_url
    from .server import build_server

    settings = Settings.from_env()
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    _logging(settings.log_level)
    with database_url(settings.database_url, settings.data_dir) as url:
        server = build_server(settings.replace(database_url=url))
        aio.run(server.serve())
    return 0 if server.started else 1


def cmd_source(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    try:
        args.main(args)
    except ValueError as exc:
        print(f"tickhub source {args.kind}: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    settings = Settings.from_env()
    _logging(settings.log_level)
    return run_demo(settings, args)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print("| setting | default | what it does |\n|---|---|---|")
        for s in SETTINGS:
            default = "" if s.default in (None, ()) else s.default
            print(f"| `{s.name}` | `{default}` | {s.help} |")
    else:
        sys.stdout.write(env_template())
    return 0


def parser() -> argparse.ArgumentParser:
    from sources import binance, coinbase, kraken, mock

    top = argparse.ArgumentParser(prog="tickhub", description="tickhub market-data hub")
    commands = top.add_subparsers(dest="command", required=True)

    hub = commands.add_parser("hub", help="run the hub (settings from TICKHUB_* and .env)")
    hub.add_argument("--host", default=None, help="overrides TICKHUB_HOST")
    hub.add_argument("--port", type=int, default=None, help="overrides TICKHUB_PORT")
    hub.set_defaults(func=cmd_hub)

    source = commands.add_parser("source", help="run a price source")
    kinds = source.add_subparsers(dest="kind", required=True)
    for module, kind, help in (
        (mock, "mock", "random-walk prices as SSE"),
        (binance, "binance", "Binance spot trades (WebSocket, or REST polling) as SSE"),
        (coinbase, "coinbase", "Coinbase Exchange ticker as SSE"),
        (kraken, "kraken", "Kraken WebSocket v2 ticker as SSE"),
    ):
        kind_parser = kinds.add_parser(kind, help=help)
        module.add_arguments(kind_parser)
        kind_parser.add_argument("--log-level", default="info")
        kind_parser.set_defaults(func=cmd_source, main=module.main)

    demo = commands.add_parser("demo", help="the local demo market: embedded database, sources, hub")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between mock ticks (default 1)")
    demo.add_argument(
        "--live", choices=("binance", "coinbase", "kraken"), default=None, help="live exchange prices instead of mocks"
    )
    demo.set_defaults(func=cmd_demo)

    settings = commands.add_parser("settings", help="print .env_template (or a Markdown table)")
    settings.add_argument("--markdown", action="store_true")
    settings.set_defaults(func=cmd_settings)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except SettingsError as exc:
        print(f"tickhub: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
