"""Fan-out scenarios: the publish-rate ramp, latency at a fixed load, slow consumers, REST under load."""

from __future__ import annotations

import asyncio
import math
import shutil
from dataclasses import dataclass

from tickhub.broker_redis import delete_namespace

from .common import CpuMeter, Latency, fresh_schema, progress
from .rig import Fleet, Reading, Rig, Window, rig

P99_LIMIT_MS = 100.0


@dataclass
class Step:
    kind: str
    subscribers: int
    rate: float  # ticks/s asked of the publisher
    published: float  # ticks/s the hub sequenced
    delivered: float  # ticks/s the subscribers read, all of them together
    latency: Latency
    hub_cpu: float  # % of one core
    client_cpu: float
    writes: float  # reads/s on the subscriber side (each at least one write by the hub)

    @property
    def p50(self) -> float:
        return self.latency.percentile(50)

    @property
    def p99(self) -> float:
        return self.latency.percentile(99)

    @property
    def max(self) -> float:
        return self.latency.highest_ms

    @property
    def kept_up(self) -> bool:
        # Readings of the hub and of the fleet are not taken at the same instant: 10% slack.
        return self.published > 0 and self.delivered >= 0.9 * min(self.published, self.rate) * self.subscribers

    @property
    def ok(self) -> bool:
        return self.kept_up and self.p99 <= P99_LIMIT_MS


async def last_id(the_rig: Rig) -> int:
    health = await the_rig.health()
    return int(health.get("last_id") or 0)


async def measure(the_rig: Rig, fleet: Fleet, kind: str, n: int, rate: float, warmup: float, window: float) -> Step:
    """Hold ``rate`` for ``warmup`` + ``window`` seconds; what the fleet saw in the window."""
    await the_rig.set_rate(rate)
    await asyncio.sleep(warmup)
    hub, clients = the_rig.hub_meter(), CpuMeter(fleet.pids)
    loop = asyncio.get_running_loop()
    first_id, first_at = await last_id(the_rig), loop.time()
    a = await asyncio.wait_for(fleet.next_report(), 10)
    hub.restart()
    clients.restart()
    await asyncio.sleep(window)
    b = await asyncio.wait_for(fleet.next_report(), 10)
    hub_cpu, client_cpu = hub.percent(), clients.percent()
    published = (await last_id(the_rig) - first_id) / (loop.time() - first_at)
    w = Window.between(a, b)
    step = Step(kind, n, rate, published, w.rate, w.latency, hub_cpu, client_cpu, w.writes / w.seconds)
    progress(
        f"  {kind:10s} N={n:<5d} {rate:8.0f} ticks/s -> {step.delivered:9.0f} deliveries/s  "
        f"p50 {step.p50:6.2f} ms  p99 {step.p99:7.2f} ms  hub {hub_cpu:3.0f}%  clients {client_cpu:3.0f}%"
    )
    return step


def client_processes(n: int) -> int:
    return max(1, min(4, math.ceil(n / 250)))


async def open_fleet(the_rig: Rig, n: int, *extra: str) -> tuple[Fleet, Reading]:
    """``n`` subscribers, spread evenly over the rig's hub replicas."""
    fleet = Fleet()
    ports = the_rig.hub_ports
    for i, port in enumerate(ports):
        share = n // len(ports) + (i < n % len(ports))
        await fleet.start(port, share, max(1, client_processes(n) // len(ports)), *extra)
    reading = await fleet.wait_open(n, timeout=60 + n / 100)
    return fleet, reading


async def ramp(
    args,
    kind: str,
    n: int,
    targets: list[float],
    replicas: int = 1,
    label: str = "",
    workers: int = 1,
    **hub_env: str,
) -> list[Step]:
    """Raise the publish rate step by step until p99 passes 100 ms or subscribers fall behind."""
    label = label or kind
    progress(f"fan-out ramp: {label}, {n} subscribers")
    steps: list[Step] = []
    async with (
        fresh_schema(args.database_url, "bench_fanout") as schema,
        rig(kind, args.database_url, schema, replicas, workers, **hub_env) as r,
    ):
        fleet, _ = await open_fleet(r, n)
        try:
            for target in targets:
                step = await measure(r, fleet, label, n, target / n, args.warmup, args.window)
                steps.append(step)
                if not step.ok:
                    break
        finally:
            await r.set_rate(0)
            await fleet.stop()
    if "TICKHUB_BROKER_URL" in hub_env:  # the hubs have stopped: their namespace (their schema) can go
        await delete_namespace(hub_env["TICKHUB_BROKER_URL"], schema)
    return steps


async def replicas_ramp(args, replicas: int, n: int, targets: list[float]) -> list[Step]:
    """The ramp with ``replicas`` hubs sharing a Redis stream, the subscribers spread over them."""
    return await ramp(args, "tickhub", n, targets, replicas, f"{replicas}x redis", TICKHUB_BROKER_URL=args.redis_url)


async def workers_ramp(args, workers: int, n: int, targets: list[float]) -> list[Step]:
    """The ramp with ``tickhub hub --workers N``: N processes on one port sharing a Redis stream."""
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    return await ramp(args, "tickhub", n, targets, 1, label, workers, TICKHUB_BROKER_URL=args.redis_url)


async def fixed_load(args, n: int, rate: float, kind: str = "tickhub") -> Step:
    """p50/p99/max at one publish rate and subscriber count."""
    progress(f"latency: {kind}, {n} subscribers at {rate:.0f} ticks/s")
    async with fresh_schema(args.database_url, "bench_latency") as schema, rig(kind, args.database_url, schema) as r:
        fleet, _ = await open_fleet(r, n)
        try:
            return await measure(r, fleet, kind, n, rate, args.warmup, args.window * 2)
        finally:
            await r.set_rate(0)
            await fleet.stop()


@dataclass
class ScaleResult:
    """One hub process at a fixed load with many subscribers, and whether each got every tick."""

    step: Step
    resyncs: int  # a subscriber that fell behind the ring is resynced: it missed ticks
    closed: int  # subscribers the hub disconnected (too slow)
    failed: int  # connections that never opened

    @property
    def complete(self) -> bool:
        return self.step.kept_up and not (self.resyncs or self.closed or self.failed)


async def scale_load(args, n: int, rate: float) -> ScaleResult:
    """``n`` subscribers of one hub process at ``rate`` ticks/s: throughput, latency, completeness."""
    progress(f"scale: one hub process, {n} subscribers at {rate:.0f} ticks/s ({n * rate:,.0f} deliveries/s offered)")
    async with fresh_schema(args.database_url, "bench_scale") as schema, rig("tickhub", args.database_url, schema) as r:
        fleet, _ = await open_fleet(r, n)
        try:
            step = await measure(r, fleet, "tickhub", n, rate, args.warmup, args.window * 2)
            reading = await fleet.next_report()
            result = ScaleResult(
                step, int(reading.get("resyncs")), int(reading.get("closed")), int(reading.get("failed"))
            )
            progress(
                f"  resyncs {result.resyncs}, disconnected {result.closed}, failed {result.failed}: "
                f"{'every subscriber got every tick' if result.complete else 'NOT every tick to everyone'}"
            )
            return result
        finally:
            await r.set_rate(0)
            await fleet.stop()


@dataclass
class SlowResult:
    stalled: int
    write_timeout: float
    calm: list[Step]  # windows with no stalled subscriber: before, and after each stall
    stalls: list[Step]  # windows while the stalled subscribers were blocked
    rss_start: int
    rss_peak: int
    rss_end: int
    resyncs: int
    slow_disconnects: int
    dropped_after_s: list[float]  # per stall: from the stallers connecting to all of them disconnected

    @staticmethod
    def pooled(steps: list[Step]) -> Latency:
        pool = Latency()
        for step in steps:
            pool.add(step.latency.counts)
        return pool

    @property
    def p99_change(self) -> float:
        """The others' p99 over every stall window against their p99 over every calm window."""
        calm = self.pooled(self.calm).percentile(99)
        return self.pooled(self.stalls).percentile(99) / calm - 1 if calm else math.nan


async def slow_consumers(args, n: int, rate: float, stalled: int, cycles: int, write_timeout: float) -> SlowResult:
    """The others' latency with and without ``stalled`` subscribers that stop reading, over ``cycles``
    stalls (each until the hub has dropped them); the hub's memory throughout."""
    progress(f"slow consumers: {n} subscribers at {rate:.0f} ticks/s; {cycles} times, {stalled} more stop reading")
    env = {
        "TICKHUB_SUBSCRIBER_BACKLOG": str(256 * 1024),
        "TICKHUB_SLOW_TIMEOUT": str(write_timeout),
        "TICKHUB_SEND_BUFFER": "65536",
    }
    window = args.window * 2
    async with (
        fresh_schema(args.database_url, "bench_slow") as schema,
        rig("tickhub", args.database_url, schema, **env) as r,
    ):
        fleet, _ = await open_fleet(r, n)
        loop = asyncio.get_running_loop()
        calm, stalls, dropped_after = [], [], []
        try:
            calm.append(await measure(r, fleet, "tickhub", n, rate, args.warmup, window))
            meter = r.hub_meter()
            rss_start = peak = meter.rss()
            for cycle in range(cycles):
                stallers = Fleet()
                try:
                    started = loop.time()
                    disconnects = (await r.health())["stream"]["slow_disconnects"]
                    await stallers.start(r.hub_port, stalled, 1, "--stall")
                    await stallers.wait_open(stalled, 30)
                    while (await r.health())["stream"]["blocked"] < stalled:  # their sockets are full
                        if loop.time() - started > 60:
                            raise RuntimeError("the stalled subscribers never blocked")
                        peak = max(peak, meter.rss())
                        await asyncio.sleep(0.1)
                    stalls.append(await measure(r, fleet, "tickhub", n, rate, 0, window))
                    while (await r.health())["stream"]["slow_disconnects"] < disconnects + stalled:
                        if loop.time() - started > 120:
                            raise RuntimeError("the stalled subscribers were never disconnected")
                        peak = max(peak, meter.rss())
                        await asyncio.sleep(0.1)
                    dropped_after.append(loop.time() - started)
                finally:
                    await stallers.stop()
                progress(f"  stall {cycle + 1}: all {stalled} dropped {dropped_after[-1]:.1f} s after they connected")
                calm.append(await measure(r, fleet, "tickhub", n, rate, args.warmup, window))
            health = (await r.health())["stream"]
            return SlowResult(
                stalled,
                write_timeout,
                calm,
                stalls,
                rss_start,
                max(peak, meter.rss()),
                meter.rss(),
                health["resyncs"],
                health["slow_disconnects"],
                dropped_after,
            )
        finally:
            await r.set_rate(0)
            await fleet.stop()


@dataclass
class RestResult:
    idle_rps: float
    loaded_rps: float
    stream: Step
    tool: str


async def wrk(url: str, seconds: float) -> float:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", "-c32", f"-d{max(1, round(seconds))}s", url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"wrk printed no rate: {out.decode()[-300:]}")


async def python_get(url: str, seconds: float, concurrency: int = 32) -> float:
    import aiohttp

    done = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while loop.time() < deadline:
            async with session.get(url) as resp:
                await resp.read()
            done += 1

    async with aiohttp.ClientSession() as session:
        started = loop.time()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return done / (loop.time() - started)


async def rest_under_load(args, n: int, rate: float) -> RestResult:
    """``GET /prices`` requests/s with no stream load, then while ``n`` subscribers stream ``rate`` ticks/s."""
    tool = "wrk" if shutil.which("wrk") else "aiohttp"
    load = wrk if tool == "wrk" else python_get
    progress(f"REST: GET /prices with {tool}, idle and with {n} subscribers at {rate:.0f} ticks/s")
    async with fresh_schema(args.database_url, "bench_rest") as schema, rig("tickhub", args.database_url, schema) as r:
        await r.set_rate(100)
        await asyncio.sleep(1)
        await r.set_rate(0)
        idle = await load(r.url + "/prices", args.window)
        fleet, _ = await open_fleet(r, n)
        try:
            await r.set_rate(rate)
            await asyncio.sleep(args.warmup)
            measuring = asyncio.create_task(measure(r, fleet, "tickhub", n, rate, 0, args.window))
            loaded = await load(r.url + "/prices", args.window)
            stream = await measuring
        finally:
            await r.set_rate(0)
            await fleet.stop()
    progress(f"  GET /prices: {idle:,.0f} req/s idle, {loaded:,.0f} req/s while streaming")
    return RestResult(idle, loaded, stream, tool)
