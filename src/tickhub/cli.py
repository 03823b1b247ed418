"""The ``tickhub`` command: hub, sources, demo and helpers."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from . import aio, gc_tuning
from .config import SETTINGS, Settings, SettingsError, env_template


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {raw}")
    return value


def cmd_hub(args: argparse.Namespace) -> int:
    from .connections import raise_open_files_limit
    from .embedded import database_url
    from .server import build_server, listen_socket

    settings = Settings.from_env()
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    _logging(settings.log_level)
    raise_open_files_limit()  # every subscriber is an open file; the default soft limit is often 1024
    if args.workers > 1:
        from .workers import check_broker, supervise

        check_broker(settings, args.workers)
        with database_url(settings.database_url, settings.data_dir) as url:
            return aio.run(supervise(settings.replace(database_url=url), args.workers))
    with database_url(settings.database_url, settings.data_dir) as url:
        settings = settings.replace(database_url=url)
        server = build_server(settings)
        reuse = args.reuse_port

        def started() -> None:
            gc_tuning.apply(settings.gc)  # the process is the hub's alone: its collector is ours to tune
            if reuse:  # a worker of --workers: its supervisor waits for this line, whatever the log level
                from .workers import WORKER_READY

                print(WORKER_READY, flush=True)

        server.on_started = started
        sockets = [listen_socket(settings, reuse_port=reuse)] if settings.send_buffer or reuse else None
        aio.run(server.serve(sockets=sockets))
    return 0 if server.started else 1


def cmd_source(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    try:
        args.main(args)
    except ValueError as exc:
        print(f"tickhub source {args.kind}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"tickhub source {args.kind}: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_bot(args: argparse.Namespace) -> int:
    from bots import runner

    _logging(args.log_level)
    try:
        return runner.main(args)
    except ValueError as exc:
        print(f"tickhub bot: {exc}", file=sys.stderr)
        return 2


def cmd_tail(args: argparse.Namespace) -> int:
    from . import tail

    _logging(args.log_level)
    return tail.main(args)


ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def cmd_keys(args: argparse.Namespace) -> int:
    """Accounts and API keys. The key is printed once, alone on stdout, so scripts can capture it."""
    from .accounts import AccountExists, Accounts, UnknownAccount
    from .embedded import database_url
    from .store import Store

    settings = Settings.from_env()
    _logging("warning")
    if getattr(args, "name", None) is not None and not ACCOUNT_NAME.match(args.name):
        print(f"tickhub keys: account names are 1-64 of A-Z a-z 0-9 _ . -, got {args.name!r}", file=sys.stderr)
        return 2

    async def run(url: str) -> int:
        store = await Store.open(url, settings.database_schema, 2, settings.db_timeout)
        accounts = Accounts(store)
        try:
            if args.action == "create":
                cash = Decimal(args.cash)
                if not cash.is_finite() or cash < 0:
                    raise InvalidOperation
                print(await accounts.create(args.name, cash))
                print(
                    f"account {args.name!r} created with cash {args.cash}; the key above is shown once", file=sys.stderr
                )
            elif args.action == "add":
                print(await accounts.issue_key(args.name, revoke_others=args.revoke_others))
            elif args.action == "revoke":
                if not await accounts.revoke(args.key_id):
                    print(f"tickhub keys: no active key {args.key_id!r}", file=sys.stderr)
                    return 1
            else:
                for row in await accounts.list():
                    print(f"{row['id']:>4}  {row['name']:<20} cash {row['cash']:>14}  keys {row['keys']}")
        except AccountExists:
            print(
                f"tickhub keys: account {args.name!r} exists (add a key with: tickhub keys add NAME)", file=sys.stderr
            )
            return 1
        except UnknownAccount:
            print(f"tickhub keys: no account {args.name!r}", file=sys.stderr)
            return 1
        except InvalidOperation:
            print(f"tickhub keys: --cash must be a number >= 0, got {args.cash!r}", file=sys.stderr)
            return 2
        finally:
            await store.close()
        return 0

    with database_url(settings.database_url, settings.data_dir) as url:
        return aio.run(run(url))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    settings = Settings.from_env()
    _logging(settings.log_level)
    return run_demo(settings, args)


def settings_table() -> str:
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.name}` | `{s.default_text}` | {s.help} |")
    return "\n".join(rows) + "\n"


def cmd_settings(args: argparse.Namespace) -> int:
    if args.readme:
        path = Path(args.readme)
        text = path.read_text()
        start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        path.write_text(head + start + settings_table() + end + tail)
    elif args.markdown:
        sys.stdout.write(settings_table())
    else:
        sys.stdout.write(env_template())
    return 0


SOURCE_KINDS = (
    ("mock", "random-walk prices as SSE"),
    ("binance", "Binance spot trades (WebSocket, or REST polling) as SSE"),
    ("coinbase", "Coinbase Exchange ticker as SSE"),
    ("kraken", "Kraken WebSocket v2 ticker as SSE"),
)


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line. A source's module is imported only for ``tickhub source``: the hub, the bots
    and ``tail`` neither pay for nor depend on the bridges' imports."""
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="tickhub", description="tickhub market-data hub")
    commands = top.add_subparsers(dest="command", required=True)

    hub = commands.add_parser("hub", help="run the hub (settings from TICKHUB_* and .env)")
    hub.add_argument("--host", default=None, help="overrides TICKHUB_HOST")
    hub.add_argument("--port", type=int, default=None, help="overrides TICKHUB_PORT")
    hub.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="hub processes on the one port (SO_REUSEPORT), e.g. one per core; needs TICKHUB_BROKER_URL=redis://",
    )
    hub.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker of --workers
    hub.set_defaults(func=cmd_hub)

    source = commands.add_parser("source", help="run a price source")
    kinds = source.add_subparsers(dest="kind", required=True)
    for kind, help in SOURCE_KINDS:
        kind_parser = kinds.add_parser(kind, help=help)
        if argv[:1] == ["source"]:
            module = importlib.import_module(f"sources.{kind}")
            module.add_arguments(kind_parser)
            kind_parser.set_defaults(main=module.main)
        kind_parser.add_argument("--log-level", default="info")
        kind_parser.set_defaults(func=cmd_source)

    bot = commands.add_parser("bot", help="run a trading bot (API key from TICKHUB_API_KEY)")
    from bots import runner

    runner.add_arguments(bot)
    bot.add_argument("--log-level", default="info")
    bot.set_defaults(func=cmd_bot)

    tail = commands.add_parser("tail", help="follow the hub's ticks in a terminal (or as JSON lines with --json)")
    from . import tail as tail_command

    tail_command.add_arguments(tail)
    tail.set_defaults(func=cmd_tail)

    keys = commands.add_parser("keys", help="accounts and their API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an account and print its API key (once)")
    create.add_argument("name")
    create.add_argument("--cash", default="10000", help="starting cash (default 10000)")
    add = actions.add_parser("add", help="print a new API key for an existing account")
    add.add_argument("name")
    add.add_argument("--revoke-others", action="store_true", help="revoke the account's other keys")
    revoke = actions.add_parser("revoke", help="revoke a key by its id (the part after th_)")
    revoke.add_argument("key_id")
    actions.add_parser("list", help="accounts, their cash and number of active keys")
    keys.set_defaults(func=cmd_keys)

    demo = commands.add_parser("demo", help="the local demo market: embedded database, sources, hub")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between mock ticks (default 1)")
    demo.add_argument("--no-bots", action="store_true", help="run without the investor and hamster bots")
    demo.add_argument(
        "--live", choices=("binance", "coinbase", "kraken"), default=None, help="live exchange prices instead of mocks"
    )
    demo.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="N hub replicas on consecutive ports sharing a Redis stream (TICKHUB_BROKER_URL, default local Redis)",
    )
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        choices=range(1, 65),
        metavar="N",
        help="N hub processes on the one port (tickhub hub --workers N) sharing a Redis stream, as --replicas",
    )
    demo.set_defaults(func=cmd_demo)

    settings = commands.add_parser("settings", help="print .env_template (or a Markdown table)")
    settings.add_argument("--markdown", action="store_true", help="print the settings as a Markdown table")
    settings.add_argument("--readme", metavar="PATH", help="rewrite the settings table of this README")
    settings.set_defaults(func=cmd_settings)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser(argv).parse_args(argv)
    try:
        code = args.func(args)
    except SettingsError as exc:
        print(f"tickhub: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
