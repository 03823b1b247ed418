"""Idle connections: many subscribers on one hub process, what each costs in memory, and their heartbeats."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .common import fresh_schema, progress
from .rig import Fleet, rig

HEARTBEAT = 2.0


@dataclass
class IdleResult:
    subscribers: int
    rss_before: int
    rss_after: int
    kernel_tcp_bytes: int  # socket buffers, both ends (not in the hub's RSS)
    heartbeat: float
    min_pings: int  # heartbeats every subscriber had received by the end
    max_silence_s: float  # the longest any open subscriber had gone without a byte, at the last reading
    hub_cpu_idle: float  # % of one core with every subscriber connected and no ticks
    open_at_end: int

    @property
    def per_subscriber_kib(self) -> float:
        return (self.rss_after - self.rss_before) / self.subscribers / 1024


def tcp_memory() -> int:
    """Bytes the kernel holds for TCP sockets (``/proc/net/sockstat`` counts pages)."""
    import resource

    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * resource.getpagesize()
    return 0


async def idle_subscribers(args, n: int) -> IdleResult:
    progress(f"idle: {n} subscribers on one hub, heartbeat every {HEARTBEAT:.0f} s")
    env = {"TICKHUB_HEARTBEAT": str(HEARTBEAT)}
    async with (
        fresh_schema(args.database_url, "bench_idle") as schema,
        rig("tickhub", args.database_url, schema, **env) as r,
    ):
        await r.set_rate(50)  # some prices, so every subscriber's snapshot has content
        await asyncio.sleep(1)
        await r.set_rate(0)
        meter = r.hub_meter()
        await asyncio.sleep(0.5)
        rss_before, tcp_before = meter.rss(), tcp_memory()
        fleet = Fleet()
        try:
            await fleet.start(r.hub_port, n, 4, "--concurrency", "50")
            await fleet.wait_open(n, timeout=120)
            progress(f"  {n} subscribers connected; waiting three heartbeats")
            meter.restart()
            await asyncio.sleep(HEARTBEAT * 3 + 0.5)
            reading = await asyncio.wait_for(fleet.next_report(), 10)
            result = IdleResult(
                n,
                rss_before,
                meter.rss(),
                tcp_memory() - tcp_before,
                HEARTBEAT,
                int(reading.get("min_pings")),
                reading.get("max_silence_s"),
                meter.percent(),
                int(reading.get("open")),
            )
        finally:
            await fleet.stop()
    progress(
        f"  {result.per_subscriber_kib:.1f} KiB per subscriber; every one had {result.min_pings} heartbeats, "
        f"longest silence {result.max_silence_s:.2f} s; hub CPU {result.hub_cpu_idle:.1f}%"
    )
    return result
