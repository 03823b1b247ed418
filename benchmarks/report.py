"""BENCHMARKS.md: the machine, the date, the command, a table per scenario and the targets.

Everything from the ``<!-- notes -->`` line on is kept from the previous file: the profile and the
decisions it led to are written by hand there.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time

import asyncpg
import psutil

from .fanout import Step
from .storage import TICKS_PER_DAY, WARMUP
from .tick_archive import ARCHIVE_SOURCES, ARCHIVE_SYMBOLS

HUB_NAMES = {"fanout": "tickhub", "ring-sse": "tickhub's ring + sse-starlette", "naive": "naive sse-starlette"}
NOTES = "<!-- notes: everything below is kept by benchmarks/report.py -->"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


async def machine(database_url: str) -> str:
    try:
        conn = await asyncpg.connect(database_url)
        try:
            pg = (await conn.fetchval("SHOW server_version")).split()[0]
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        pg = "?"
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Linux {platform.release()}; "
        f"Python {platform.python_version()} with uvloop and httptools; PostgreSQL {pg} on the same machine. "
        "Hub, sources, subscribers and PostgreSQL all share these cores."
    )


def _ms(x: float) -> str:
    return "—" if math.isnan(x) else ("> 2000" if math.isinf(x) else f"{x:.2f}")


def _k(x: float) -> str:
    return f"{x / 1000:,.1f}k"


def best(steps: list[Step]) -> tuple[float, bool]:
    """The most deliveries/s of a step within p99 ≤ 100 ms, and whether a step past it failed (else a floor)."""
    ok = [s.delivered for s in steps if s.ok]
    return (max(ok) if ok else 0.0), any(not s.ok for s in steps)


def best_text(steps: list[Step]) -> str:
    value, bounded = best(steps)
    return f"{_k(value)}" if bounded else f"≥ {_k(value)} (the ramp ended first)"


def ramp_table(steps: list[Step]) -> str:
    rows = [
        "| offered deliveries/s | ticks/s sequenced | deliveries/s | p50 ms | p99 ms | max ms | reads/s "
        "| hub CPU | clients CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        mark = "" if s.ok else " ✗"
        rows.append(
            f"| {_k(s.rate * s.subscribers)} | {s.published:,.0f} | {_k(s.delivered)}{mark} | {_ms(s.p50)} "
            f"| {_ms(s.p99)} | {_ms(s.max)} | {s.writes:,.0f} | {s.hub_cpu:.0f}% | {s.client_cpu:.0f}% |"
        )
    return "\n".join(rows)


def fanout_section(results: dict) -> list[str]:
    out = ["## 1. Fan-out", ""]
    out.append(
        "One paced publisher → hub → N subscribers in 1–4 load processes (raw asyncio protocols that count "
        "`event: tick` and read one timestamp per read). The rate rises step by step until p99 passes 100 ms "
        "or the subscribers fall behind (✗). Latency is source timestamp → subscriber read, counted for every "
        "tick at the age of the oldest tick in its read (an upper bound). Baseline: `benchmarks/naive_hub.py`, "
        "sse-starlette with a queue per subscriber, encoding per event and one write per event, same machine and run. "
        "Between the two, `benchmarks/ring_sse_hub.py`: tickhub's hub (ring of encoded frames) with `/stream` served "
        "by sse-starlette's `EventSourceResponse`, one generator per subscriber woken by every tick, yielding every "
        "frame since its cursor as one batch: the measurement behind tickhub's own ASGI response for `/stream`."
    )
    out.append("")
    out.append("| hub | subscribers | max deliveries/s at p99 ≤ 100 ms |")
    out.append("|---|---:|---:|")
    for kind in HUB_NAMES:
        for steps in results.get(kind, []):
            if steps:
                out.append(f"| {HUB_NAMES[kind]} | {steps[0].subscribers} | {best_text(steps)} |")
    ratio = fanout_ratio(results)
    if ratio is not None:
        out.append("")
        out.append(f"At 1000 subscribers tickhub delivers **{ratio:.1f}×** the naive hub's maximum.")
    for kind in HUB_NAMES:
        for steps in results.get(kind, []):
            if steps:
                out += [
                    "",
                    f"### {HUB_NAMES[kind]}, {steps[0].subscribers} subscribers",
                    "",
                ]
                out.append(ramp_table(steps))
    return out


def fanout_ratio(results: dict) -> float | None:
    ours = [s for s in results.get("fanout", []) if s and s[0].subscribers == 1000]
    naive = [s for s in results.get("naive", []) if s and s[0].subscribers == 1000]
    if not ours or not naive or not best(naive[0])[0]:
        return None
    return best(ours[0])[0] / best(naive[0])[0]


def ingest_section(results: dict) -> list[str]:
    if "ingest" not in results:
        return []
    run, copy = results["ingest"]
    return [
        "## 2. Ingest",
        "",
        f"{run.sources} mock sources (`tickhub source mock --interval 0`) → hub → PostgreSQL, dedup on "
        "(`(source, seq)` unique, replays dropped at ingest), timed from the first accepted tick to the last one "
        "committed. Baseline: the same rows, read back, copied again with asyncpg `copy_records_to_table` "
        "into a fresh table of the same shape, 5000 rows a transaction.",
        "",
        "| | rows | seconds | ticks/s | hub CPU | sources CPU | PostgreSQL CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| hub ingest | {run.source_ticks:,} | {run.seconds:.2f} | {run.rate:,.0f} | {run.hub_cpu:.0f}% "
        f"({run.hub_us_per_tick:.1f} µs/tick) | {run.source_cpu:.0f}% | {run.postgres_cpu:.0f}% |",
        f"| raw COPY | {copy.rows:,} | {copy.seconds:.2f} | {copy.rate:,.0f} | | | |",
        "",
        f"Hub ingest is **{run.rate / copy.rate:.0%}** of raw COPY.",
    ]


def idle_section(results: dict) -> list[str]:
    if "idle" not in results:
        return []
    r = results["idle"]
    return [
        "## 3. Idle subscribers",
        "",
        f"{r.subscribers:,} subscribers on one hub process, no ticks, heartbeat every {r.heartbeat:.0f} s.",
        "",
        "| subscribers | hub RSS before | hub RSS after | per subscriber | kernel TCP memory | "
        "heartbeats each (min) | longest silence | hub CPU idle |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r.open_at_end:,} | {r.rss_before / 2**20:.0f} MiB | {r.rss_after / 2**20:.0f} MiB | "
        f"**{r.per_subscriber_kib:.1f} KiB** | {r.kernel_tcp_bytes / 2**20:.1f} MiB | {r.min_pings} | "
        f"{r.max_silence_s:.2f} s | {r.hub_cpu_idle:.1f}% |",
    ]


def rest_section(results: dict) -> list[str]:
    if "rest" not in results:
        return []
    r = results["rest"]
    s = r.stream
    return [
        "## 4. REST under streaming load",
        "",
        f"`GET /prices` with {r.tool} (32 connections), first with no subscribers, then while {s.subscribers} "
        f"subscribers stream {s.rate:.0f} ticks/s.",
        "",
        "| | requests/s | stream deliveries/s | stream p99 ms |",
        "|---|---:|---:|---:|",
        f"| idle hub | {r.idle_rps:,.0f} | | |",
        f"| while streaming | {r.loaded_rps:,.0f} | {_k(s.delivered)} | {_ms(s.p99)} |",
    ]


def latency_section(results: dict) -> list[str]:
    if "latency" not in results:
        return []
    s = results["latency"]
    return [
        "## 5. Latency at demo-like load",
        "",
        f"{s.rate:.0f} ticks/s to {s.subscribers} subscribers (source timestamp → subscriber read).",
        "",
        "| p50 ms | p99 ms | max ms | deliveries/s | hub CPU |",
        "|---:|---:|---:|---:|---:|",
        f"| {_ms(s.p50)} | {_ms(s.p99)} | {_ms(s.max)} | {_k(s.delivered)} | {s.hub_cpu:.0f}% |",
    ]


def slow_section(results: dict) -> list[str]:
    if "slow" not in results:
        return []
    r = results["slow"]
    first = r.calm[0]
    out = [
        "## 6. Slow consumers",
        "",
        f"{first.subscribers} subscribers at {first.rate:.0f} ticks/s. {len(r.stalls)} times, {r.stalled} more "
        "connect, read their headers and never read again (4 KiB receive buffers) until the hub drops them; "
        "a stall window starts once the hub has moved all of them aside (their sockets full). Backlog bound "
        f"256 KiB, write timeout {r.write_timeout:.0f} s, `TICKHUB_SEND_BUFFER` 64 KiB. Latency is that of the other "
        "subscribers.",
        "",
        "| window | p50 ms | p99 ms | max ms | deliveries/s | hub CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = ["calm (before)"]
    for i in range(len(r.stalls)):
        labels += [f"stall {i + 1}", f"calm (after stall {i + 1})"]
    windows = [r.calm[0]]
    for stall, after in zip(r.stalls, r.calm[1:], strict=True):
        windows += [stall, after]
    for label, s in zip(labels, windows, strict=True):
        out.append(f"| {label} | {_ms(s.p50)} | {_ms(s.p99)} | {_ms(s.max)} | {_k(s.delivered)} | {s.hub_cpu:.0f}% |")
    calm, stall = r.pooled(r.calm), r.pooled(r.stalls)
    out.append(f"| **all calm windows** | {_ms(calm.percentile(50))} | {_ms(calm.percentile(99))} | | | |")
    out.append(f"| **all stall windows** | {_ms(stall.percentile(50))} | {_ms(stall.percentile(99))} | | | |")
    drops = ", ".join(f"{d:.1f} s" for d in r.dropped_after_s)
    out += [
        "",
        f"The others' p99 over the stall windows: **{r.p99_change:+.0%}** against the calm ones. Hub RSS "
        f"{r.rss_start / 2**20:.0f} MiB before, {r.rss_peak / 2**20:.0f} MiB at most, {r.rss_end / 2**20:.0f} MiB "
        f"after; {r.resyncs} resyncs; the stalled subscribers were all dropped, {drops} after they connected.",
    ]
    return out


def composite_section(results: dict) -> list[str]:
    if "composite" not in results:
        return []
    runs = results["composite"]
    out = [
        "## 7. Composite prices on and off",
        "",
        f"{runs[0].sources} mock sources, all quoting BTCUSD (venues of the built-in BTC-USD), as fast as "
        "they go; with composites on, each source tick recomputes the composite and most publish one.",
        "",
        "| | source ticks/s | rows stored | hub µs per source tick |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        out.append(f"| {run.label} | {run.rate:,.0f} | {run.stored:,} | {run.hub_us_per_tick:.1f} |")
    off = [r.rate for r in runs if r.label == "composite off"]
    on = [r.rate for r in runs if r.label == "composite on"]
    if off and on:
        out += ["", f"With composites on, ingest runs at **{(sum(on) / len(on)) / (sum(off) / len(off)):.0%}** of off."]
    return out


def wal_ratio(results: dict, label: str) -> float | None:
    runs = results.get("wal", [])
    off = [r.rate for r in runs if r.label == "log off"]
    on = [r.rate for r in runs if r.label == label]
    return (sum(on) / len(on)) / (sum(off) / len(off)) if off and on else None


def wal_section(results: dict) -> list[str]:
    if "wal" not in results:
        return []
    runs = results["wal"]
    out = [
        "## 8. The write-ahead log on and off",
        "",
        f"{runs[0].sources} mock sources as fast as they go into one hub with `memory://`: the write-ahead log "
        "off (`TICKHUB_WAL=off`), on (the default: each batch written before it is streamed), and on with an "
        "fdatasync per batch (`TICKHUB_WAL_FSYNC=batch`), in turns.",
        "",
        "| | source ticks/s | hub µs per source tick | hub RSS at most |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        out.append(f"| {run.label} | {run.rate:,.0f} | {run.hub_us_per_tick:.1f} | {run.rss_peak / 2**20:.0f} MiB |")
    on, synced = wal_ratio(results, "log on"), wal_ratio(results, "log on, fsync batch")
    if on is not None:
        out += ["", f"With the log on, ingest runs at **{on:.0%}** of off; with an fdatasync per batch, {synced:.0%}."]
    return out


def fields_ratio(results: dict) -> float | None:
    runs = results.get("fields", [])
    price = [r.rate for r in runs if r.label == "price only"]
    every = [r.rate for r in runs if r.label == "all fields"]
    return (sum(every) / len(every)) / (sum(price) / len(price)) if price and every else None


def fields_section(results: dict) -> list[str]:
    if "fields" not in results:
        return []
    runs = results["fields"]
    out = [
        "## 12. Ticks with every optional field",
        "",
        f"{runs[0].sources} mock sources as fast as they go, publishing the price alone (`--fields price`) or "
        "every optional field (`--fields all`: qty, side, trade_id, bid, bid_qty, ask, ask_qty), in turns. A "
        "frame is a tick's SSE event as subscribers get it (the latest tick of each symbol).",
        "",
        "| | source ticks/s | hub µs per source tick | sources CPU | PostgreSQL CPU | bytes per frame |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        out.append(
            f"| {run.label} | {run.rate:,.0f} | {run.hub_us_per_tick:.1f} | {run.source_cpu:.0f}% "
            f"| {run.postgres_cpu:.0f}% | {run.frame_bytes:.0f} |"
        )
    ratio = fields_ratio(results)
    if ratio is not None:
        out += ["", f"With every field, ingest runs at **{ratio:.0%}** of price only."]
    return out


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def storage_section(results: dict) -> list[str]:
    steps = results.get("storage")
    if not steps:
        return []
    empty, top, run = steps[0], steps[-1], steps[0].runs[0]
    out = [
        "## 13. Storage: the tick table as it grows",
        "",
        f"The `ticks` table as the hub keeps it: one partition a day (the archive's days laid out first, as a "
        f"hub keeping them has them), each with the `(id, ts)` key, the `(source, seq, ts)` key and the "
        f"`(symbol, ts)` index, and the one-minute and one-hour rollups written with each batch. "
        f"At each size: {run.sources} mock sources × {run.source_ticks // run.sources:,} "
        f"ticks with every optional field (`--fields all`) into the hub, timed to the last commit (the best of "
        f"{len(empty.runs)}); then, from a hub with no sources, `GET /prices/SYMBOL/history?limit=1000` and "
        "`GET /prices/SYMBOL/candles?interval=1m&since=…&until=…` over one day, "
        f"{empty.history.requests} requests each, one at a time, after {WARMUP} untimed. Bytes per tick: "
        "`pg_total_relation_size` of every partition (heap, TOAST and indexes) over the rows. The rows are the table's "
        "when the ingest starts; the queries and the sizes come after it. Between sizes the table grows by COPY "
        f"of archived ticks ({len(ARCHIVE_SYMBOLS)} symbols from {len(ARCHIVE_SOURCES)} sources, every optional "
        f"field, {TICKS_PER_DAY:,} a day through past days), then ANALYZE and CHECKPOINT. On the empty table the "
        f"queries read the {empty.symbol} ticks the ingest has just written ({empty.candles.ticks:,} in "
        f"{empty.candles.items} one-minute candle{'' if empty.candles.items == 1 else 's'}); from the first "
        f"size on, the newest archived ticks of {top.symbol} (the day: {top.candles.ticks:,} ticks in "
        f"{top.candles.items:,} candles).",
        "",
        "| rows | ingest ticks/s | vs empty | history p50 / p99 ms | 1-day 1m candles p50 / p99 ms "
        "| bytes per tick | table + indexes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        out.append(
            f"| {s.rows:,} | {s.rate:,.0f} | {s.rate / empty.rate:.0%} | {s.history.p50:.1f} / {s.history.p99:.1f} "
            f"| {s.candles.p50:.1f} / {s.candles.p99:.1f} | {s.bytes_per_tick:.0f} "
            f"| {_bytes(s.total_bytes)} ({_bytes(s.index_bytes)} indexes) |"
        )
    grown = [s.grow_rate for s in steps[1:]]
    if grown:
        out += ["", f"The archive went in at {', '.join(f'{r:,.0f}' for r in grown)} rows/s (COPY, indexes kept)."]
    drop = top.drop
    if drop is not None:
        out += [
            "",
            f"Retention at {top.rows:,} rows: one more ingest run, and a second into it the oldest day "
            f"({drop.rows:,} ticks) dropped (`tickhub.partitions.maintain`, its wait for the table's lock "
            f"included): **{drop.seconds * 1000:.0f} ms**; that run ingested {drop.run.rate:,.0f} ticks/s "
            f"({drop.run.rate / top.rate:.0%} of the same size's best run without a drop).",
        ]
    return out


def scale_section(results: dict) -> list[str]:
    runs = results.get("scale")
    if not runs:
        return []
    out = [
        "## 11. Thousands of subscribers on one process",
        "",
        "One hub process (no workers), the subscribers in up to four load processes on the same two cores, "
        "a fixed publish rate held for the warm-up and twice the window. Every subscriber got every tick "
        "when the deliveries match the ticks sequenced times the subscribers (within the readings' 10%) and "
        "none was resynced, disconnected or failed to connect.",
        "",
        "| subscribers | ticks/s | deliveries/s | p50 ms | p99 ms | max ms | hub CPU | clients CPU "
        "| resyncs | disconnected | every tick to everyone |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        s = r.step
        out.append(
            f"| {s.subscribers:,} | {s.published:,.0f} | {s.delivered:,.0f} | {s.p50:.1f} | {s.p99:.1f} "
            f"| {s.max:.1f} | {s.hub_cpu:.0f}% | {s.client_cpu:.0f}% | {r.resyncs} | {r.closed} "
            f"| {'yes' if r.complete else '**no**'} |"
        )
    return out


def workers_section(results: dict) -> list[str]:
    if "workers" not in results:
        return []
    runs = results["workers"]
    out = [
        "## 10. Workers: one port, one process per core",
        "",
        f"`tickhub hub --workers N` (N processes on one port with SO_REUSEPORT, sharing a Redis stream; one "
        f"ingests), {runs[0][0].subscribers} subscribers spread over the workers by the kernel. On this 2-core "
        "machine the workers, Redis, the publisher and the load processes share the same two cores.",
        "",
        "| workers | max deliveries/s at p99 ≤ 100 ms |",
        "|---:|---:|",
    ]
    for steps in runs:
        out.append(f"| {steps[0].kind.split(' ')[0]} | {best_text(steps)} |")
    if len(runs) == 2 and best(runs[0])[0]:
        out += ["", f"2 workers deliver **{best(runs[1])[0] / best(runs[0])[0]:.2f}×** what 1 does."]
    for steps in runs:
        out += ["", f"### {steps[0].kind}", "", ramp_table(steps)]
    return out


def replicas_section(results: dict) -> list[str]:
    if "replicas" not in results:
        return []
    runs = results["replicas"]
    out = [
        "## 9. Replicas over Redis Streams",
        "",
        f"The ramp with hub replicas sharing the machine's Redis (`TICKHUB_BROKER_URL`), {runs[0][0].subscribers} "
        "subscribers spread evenly over them, one replica ingesting. On one 2-core machine every replica, Redis, "
        "the publisher and the load processes share the same two cores, so this shows the cost of the shared log "
        "more than the gain of more machines.",
        "",
        "| replicas | max deliveries/s at p99 ≤ 100 ms (all replicas together) |",
        "|---:|---:|",
    ]
    for steps in runs:
        out.append(f"| {steps[0].kind.split('x')[0]} | {best_text(steps)} |")
    if len(runs) == 2 and best(runs[0])[0]:
        out += ["", f"3 replicas deliver **{best(runs[1])[0] / best(runs[0])[0]:.2f}×** what 1 does."]
    for steps in runs:
        out += ["", f"### {steps[0].kind}", "", ramp_table(steps)]
    return out


def targets_table(results: dict) -> str:
    rows = ["| target | measured | |", "|---|---|---|"]

    def row(target: str, measured: str, ok: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'—' if ok is None else ('met' if ok else '**not met**')} |")

    for steps in results.get("fanout", []):
        if steps and steps[0].subscribers == 1000:
            value, _ = best(steps)
            ratio = fanout_ratio(results)
            text = f"{best_text(steps)} deliveries/s" + (f", {ratio:.1f}× naive" if ratio else "")
            row(
                "fan-out at 1000 subscribers: ≥ 150k deliveries/s at p99 ≤ 100 ms, ≥ 10× naive",
                text,
                value >= 150e3 and (ratio or 0) >= 10,
            )
    if "ingest" in results:
        run, copy = results["ingest"]
        ratio = run.rate / copy.rate
        row(
            "ingest: ≥ 100k ticks/s and ≥ 70% of raw COPY",
            f"{run.rate:,.0f} ticks/s, {ratio:.0%}",
            run.rate >= 100e3 and ratio >= 0.7,
        )
    if "idle" in results:
        r = results["idle"]
        row(
            f"{r.subscribers:,} idle subscribers at ≤ 25 KiB each",
            f"{r.per_subscriber_kib:.1f} KiB",
            r.per_subscriber_kib <= 25 and r.open_at_end == r.subscribers,
        )
    if "latency" in results:
        s = results["latency"]
        row(
            f"latency at {s.rate:.0f} ticks/s × {s.subscribers} subscribers: p99 < 20 ms",
            f"p50 {_ms(s.p50)} ms, p99 {_ms(s.p99)} ms, max {_ms(s.max)} ms",
            s.p99 < 20,
        )
    if "rest" in results:
        r = results["rest"]
        row(
            "`GET /prices` ≥ 5k requests/s while streaming",
            f"{r.loaded_rps:,.0f} req/s (idle {r.idle_rps:,.0f})",
            r.loaded_rps >= 5000,
        )
    ratio = wal_ratio(results, "log on")
    if ratio is not None:
        row("ingest with the write-ahead log on ≥ 90% of off", f"{ratio:.0%}", ratio >= 0.9)
    ratio = fields_ratio(results)
    if ratio is not None:
        row("ingest with every optional field ≥ 90% of price only", f"{ratio:.0%}", ratio >= 0.9)
    if "slow" in results:
        r = results["slow"]
        change = r.p99_change
        row(
            "a stalled subscriber raises the others' p99 by ≤ 10%; hub memory bounded",
            f"{change:+.0%}; RSS peak {r.rss_peak / 2**20:.0f} MiB (from {r.rss_start / 2**20:.0f})",
            change <= 0.10,
        )
    for r in results.get("scale") or []:
        s = r.step
        limit = 100 if s.subscribers <= 5000 else 250
        row(
            f"{s.subscribers:,} subscribers: ≥ 500k deliveries/s with p99 ≤ {limit} ms, every tick to everyone",
            f"{s.delivered / 1e3:,.0f}k deliveries/s, p99 {s.p99:.0f} ms, "
            f"{'every tick to everyone' if r.complete else 'ticks missed'}",
            s.delivered >= 500e3 and s.p99 <= limit and r.complete,
        )
    steps = results.get("storage") or []
    if len(steps) > 1:
        empty, top = steps[0], steps[-1]
        at = f"at {top.rows:,} rows"
        ratio = top.rate / empty.rate
        row(
            "ingest at 100M rows ≥ 80% of empty",
            f"{ratio:.0%} {at} ({top.rate:,.0f} against {empty.rate:,.0f} ticks/s)",
            ratio >= 0.8,
        )
        row(
            "history?limit=1000 p99 < 50 ms at 100M rows",
            f"p99 {top.history.p99:.1f} ms {at} (p50 {top.history.p50:.1f})",
            top.history.p99 < 50,
        )
        row(
            "a day of 1-minute candles < 50 ms at 100M rows",
            f"p99 {top.candles.p99:.1f} ms {at} (p50 {top.candles.p50:.1f}; {top.candles.ticks:,} ticks)",
            top.candles.p99 < 50,
        )
        if top.drop is not None:
            row(
                "dropping a day < 1 s, ingest going on",
                f"{top.drop.seconds * 1000:.0f} ms for {top.drop.rows:,} ticks; ingest meanwhile "
                f"{top.drop.run.rate / top.rate:.0%} of its best",
                top.drop.seconds < 1.0,
            )
    return "\n".join(rows)


def render(results: dict, machine_text: str, command: str, previous: str) -> str:
    """The whole file; ``previous`` is the old file's text, whose notes are kept."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(results["started"]))
    _, found, kept = previous.partition(NOTES)
    notes = kept if found else ""
    parts = [
        "# tickhub benchmarks",
        "",
        f"Written by `{command}` on {when}, in {results['seconds'] / 60:.1f} minutes.",
        "",
        f"**Machine:** {machine_text}",
        "",
        "Figures drift from machine to machine; each scenario carries its baseline from the same run.",
        "",
        "## Targets",
        "",
        targets_table(results),
        "",
    ]
    for section in (
        fanout_section,
        ingest_section,
        idle_section,
        rest_section,
        latency_section,
        slow_section,
        composite_section,
        wal_section,
        replicas_section,
        workers_section,
        scale_section,
        fields_section,
        storage_section,
    ):
        lines = section(results)
        if lines:
            parts += [*lines, ""]
    parts.append(NOTES)
    return "\n".join(parts) + (notes if notes else "\n")
