"""``make bench``: every scenario against the real hub over loopback, written to BENCHMARKS.md.

    python -m benchmarks.run            # the full table (about 15 minutes), writes BENCHMARKS.md
    python -m benchmarks.run --quick    # under 2 minutes, writes .tickhub/BENCHMARKS-quick.md
    python -m benchmarks.run --only fanout,ingest

Each figure is compared with a baseline measured in the same run. Nothing here asserts a time.
Needs PostgreSQL (--database-url, else TICKHUB_DATABASE_URL, else the test database).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tickhub import aio

from . import report
from .common import DEFAULT_DATABASE_URL, progress, raise_fd_limit
from .fanout import fixed_load, ramp, replicas_ramp, rest_under_load, scale_load, slow_consumers, workers_ramp
from .idle import idle_subscribers
from .ingest import composite_on_off, fields_on_off, ingest_vs_copy, wal_on_off
from .storage import storage_growth

SCENARIOS = (
    "fanout",
    "scale",
    "latency",
    "rest",
    "slow",
    "idle",
    "ingest",
    "composite",
    "wal",
    "fields",
    "replicas",
    "workers",
    "storage",
)


def plan(quick: bool) -> dict:
    if quick:
        return {
            "fanout": [(1000, [100e3, 200e3, 400e3])],
            "ring-sse": [(1000, [25e3, 50e3, 100e3])],
            "naive": [(1000, [10e3, 20e3, 40e3])],
            "scale": [(2000, 50.0)],
            "latency": (100, 1000.0),
            "rest": (1000, 100.0),
            "slow": (1000, 200.0, 3, 1, 3.0),
            "idle": 2000,
            "ingest": (2, 100_000),
            "composite": (2, 50_000, 1),
            "wal": (2, 100_000, 1),
            "fields": (2, 100_000, 1),
            "replicas": (1500, [150e3, 300e3, 600e3]),
            "workers": (5000, [100e3, 250e3, 500e3]),
            "storage": (2, 100_000, [1_000_000, 3_000_000], 1, 100),
        }
    steps = [50e3, 100e3, 150e3, 200e3, 300e3, 400e3, 600e3, 800e3, 1.0e6, 1.4e6, 2.0e6, 2.8e6, 4.0e6, 5.6e6]
    return {
        "fanout": [(100, steps), (1000, steps), (5000, steps)],
        "ring-sse": [(1000, [25e3, 50e3, 75e3, 100e3, 150e3, 200e3])],
        "naive": [
            (100, [10e3, 15e3, 20e3, 25e3, 30e3, 40e3, 50e3, 60e3, 80e3]),
            (1000, [10e3, 15e3, 20e3, 25e3, 30e3, 40e3, 50e3]),
        ],
        # subscribers, ticks/s: a little over 500k deliveries/s offered to 5,000 and to 10,000 subscribers
        "scale": [(5000, 105.0), (10_000, 52.0)],
        "latency": (100, 1000.0),
        "rest": (1000, 100.0),
        "slow": (1000, 50.0, 5, 2, 10.0),
        "idle": 10_000,
        "ingest": (2, 300_000),
        "composite": (2, 100_000, 2),
        "wal": (2, 300_000, 2),
        "fields": (2, 300_000, 2),
        "replicas": (1500, [150e3, 300e3, 600e3, 1.0e6, 1.4e6, 2.0e6, 2.8e6, 4.0e6]),
        "workers": (5000, [100e3, 250e3, 500e3, 750e3, 1.0e6, 1.4e6]),
        # sources, ticks each, table sizes, ingest runs at each size, requests of each query.
        # 10^8 rows take about 25 GB of disk while they last (the scenario drops them at its end).
        "storage": (2, 300_000, [10_000_000, 100_000_000], 2, 200),
    }


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    p = plan(args.quick)
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    results: dict = {"quick": args.quick, "started": time.time()}
    started = time.perf_counter()
    if "fanout" in only:
        results["fanout"] = [await ramp(args, "tickhub", n, t) for n, t in p["fanout"]]
        results["ring-sse"] = [await ramp(args, "ring-sse", n, t) for n, t in p["ring-sse"]]
        results["naive"] = [await ramp(args, "naive", n, t) for n, t in p["naive"]]
    if "scale" in only:
        results["scale"] = [await scale_load(args, n, rate) for n, rate in p["scale"]]
    if "latency" in only:
        results["latency"] = await fixed_load(args, *p["latency"])
    if "rest" in only:
        results["rest"] = await rest_under_load(args, *p["rest"])
    if "slow" in only:
        results["slow"] = await slow_consumers(args, *p["slow"])
    if "idle" in only:
        results["idle"] = await idle_subscribers(args, p["idle"])
    if "ingest" in only:
        results["ingest"] = await ingest_vs_copy(args, *p["ingest"])
    if "composite" in only:
        results["composite"] = await composite_on_off(args, *p["composite"])
    if "wal" in only:
        results["wal"] = await wal_on_off(args, *p["wal"])
    if "fields" in only:
        results["fields"] = await fields_on_off(args, *p["fields"])
    if "replicas" in only:
        n, targets = p["replicas"]
        results["replicas"] = [await replicas_ramp(args, replicas, n, targets) for replicas in (1, 3)]
    if "workers" in only:
        n, targets = p["workers"]
        results["workers"] = [await workers_ramp(args, workers, n, targets) for workers in (1, 2)]
    if "storage" in only:
        results["storage"] = await storage_growth(args, *p["storage"])
    results["seconds"] = time.perf_counter() - started
    out = Path(args.output or (".tickhub/BENCHMARKS-quick.md" if args.quick else "BENCHMARKS.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command += f" (--only {args.only})"
    machine = await report.machine(args.database_url)
    previous = out.read_text() if out.exists() else ""  # noqa: ASYNC240 (one small file, at the end)
    out.write_text(report.render(results, machine, command, previous))  # noqa: ASYNC240
    progress(f"done in {results['seconds']:.0f} s; wrote {out}")
    print(report.targets_table(results))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run for development (< 2 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios of: {', '.join(SCENARIOS)}")
    parser.add_argument("--output", default="", help="where to write the Markdown (default BENCHMARKS.md)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds at each rate before measuring")
    parser.add_argument("--window", type=float, default=None, help="seconds measured at each rate")
    parser.add_argument(
        "--database-url", default=os.environ.get("TICKHUB_DATABASE_URL") or DEFAULT_DATABASE_URL, help="PostgreSQL DSN"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TICKHUB_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0",
        help="Redis for the replicas scenario",
    )
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.only.split(","))) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.window is None:
        args.window = 1.5 if args.quick else 3.0
    return args


if __name__ == "__main__":
    try:
        aio.run(main(parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
