"""GET /metrics: the hub's counters in Prometheus text format (prometheus-client).

Most figures already exist as plain counters on the parts (ingest stats, fan-out, writer), so a
collector reads them at scrape time and the hot path pays nothing for metrics. Writer batch size
and latency are real histograms, observed once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubMetrics(Collector):
    """One registry per hub (no process-global state), with the hub's figures and two histograms."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_size = Histogram(
            "tickhub_writer_batch_size",
            "Ticks per PostgreSQL write.",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "tickhub_writer_batch_seconds",
            "Time to write one batch to PostgreSQL.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.registry.register(self)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        events = CounterMetricFamily("tickhub_source_events", "Source events by outcome.", labels=["source", "outcome"])
        rejects = CounterMetricFamily(
            "tickhub_source_rejects", "Rejected source events by reason.", labels=["source", "reason"]
        )
        gaps = CounterMetricFamily(
            "tickhub_source_gaps", "Jumps in a source's seq (events it no longer had).", labels=["source"]
        )
        connects = CounterMetricFamily("tickhub_source_connects", "Connections made to a source.", labels=["source"])
        failures = CounterMetricFamily(
            "tickhub_source_failures", "Unexpected errors in a source's ingest (each reconnected).", labels=["source"]
        )
        up = GaugeMetricFamily("tickhub_source_up", "1 while connected to the source.", labels=["source"])
        lag = GaugeMetricFamily(
            "tickhub_source_lag_seconds", "Receive time minus source time of the last tick.", labels=["source"]
        )
        for name, client in (hub.ingest.clients if hub.ingest is not None else {}).items():
            stats = client.stats
            for outcome, value in (
                ("accepted", stats.accepted),
                ("duplicate", stats.duplicates),
                ("ignored", stats.ignored),
                ("rejected", sum(stats.rejects.values())),
            ):
                events.add_metric([name, outcome], value)
            for reason, value in stats.rejects.items():
                rejects.add_metric([name, reason], value)
            gaps.add_metric([name], stats.gaps)
            connects.add_metric([name], stats.connects)
            failures.add_metric([name], stats.failures)
            up.add_metric([name], 1.0 if stats.state == "connected" else 0.0)
            if stats.last_tick_lag is not None:
                lag.add_metric([name], stats.last_tick_lag)
        yield from (events, rejects, gaps, connects, failures, up, lag)

        fanout, writer = hub.fanout, hub.writer
        yield CounterMetricFamily("tickhub_ticks_published", "Ticks put on the stream.", value=hub.ring.head)
        yield CounterMetricFamily(
            "tickhub_deliveries", "Ticks written to subscribers (ticks x subscribers).", value=fanout.deliveries
        )
        yield CounterMetricFamily("tickhub_stream_writes", "Writes to subscriber connections.", value=fanout.writes)
        yield CounterMetricFamily(
            "tickhub_stream_bytes", "Bytes written to subscriber connections.", value=fanout.bytes_out
        )
        yield GaugeMetricFamily("tickhub_subscribers", "Open /stream subscriptions.", value=fanout.count)
        yield GaugeMetricFamily(
            "tickhub_subscribers_blocked", "Subscribers whose socket is full.", value=fanout.busy_count
        )
        yield GaugeMetricFamily(
            "tickhub_subscriber_backlog_bytes",
            "Bytes blocked subscribers are behind, summed.",
            value=fanout.backlog_bytes(),
        )
        yield CounterMetricFamily("tickhub_resyncs", "Subscribers resynced from a snapshot.", value=fanout.resyncs)
        yield CounterMetricFamily(
            "tickhub_slow_disconnects", "Subscribers disconnected for being too slow.", value=fanout.slow_disconnects
        )
        yield GaugeMetricFamily(
            "tickhub_writer_backlog", "Ticks waiting to be written to PostgreSQL.", value=writer.backlog_size
        )
        yield CounterMetricFamily("tickhub_writer_written", "Ticks written to PostgreSQL.", value=writer.written)
        yield CounterMetricFamily(
            "tickhub_writer_dropped", "Ticks dropped because the write backlog was full.", value=writer.dropped
        )
        yield CounterMetricFamily("tickhub_writer_errors", "Failed PostgreSQL writes (retried).", value=writer.errors)
        yield CounterMetricFamily(
            "tickhub_writer_rejected",
            "Ticks PostgreSQL refused, set aside in rejected_ticks so the rest of their batch was written.",
            value=writer.rejected,
        )
        storage = hub.partitions.state
        yield GaugeMetricFamily(
            "tickhub_ticks_partitions", "Partitions of the tick table (days, past, future).", value=storage.partitions
        )
        yield GaugeMetricFamily(
            "tickhub_ticks_table_bytes", "The tick table's size with its indexes.", value=storage.table_bytes
        )
        if storage.oldest_ts is not None:
            yield GaugeMetricFamily(
                "tickhub_ticks_oldest_timestamp_seconds",
                "Time (ts) of the oldest tick kept.",
                value=storage.oldest_ts.timestamp(),
            )
        yield CounterMetricFamily(
            "tickhub_ticks_dropped_days", "Days of ticks retention dropped.", value=storage.dropped_days
        )
        yield CounterMetricFamily(
            "tickhub_ticks_dropped_late",
            "Ticks past the retention dropped with ticks_past (they came after their day was gone).",
            value=storage.dropped_late_ticks,
        )
        yield GaugeMetricFamily(
            "tickhub_ingest_paused",
            "1 while ingest waits for the writer to catch up with a slow PostgreSQL.",
            value=0.0 if writer.room.is_set() else 1.0,
        )
        yield CounterMetricFamily(
            "tickhub_ingest_pauses", "Times ingest paused for the writer to catch up.", value=writer.pauses
        )
        yield CounterMetricFamily(
            "tickhub_tasks_completed", "Tasks this replica's worker completed.", value=hub.tasks.completed
        )
        yield GaugeMetricFamily(
            "tickhub_ingesting", "1 while this replica holds the ingest lease.", value=float(hub.sequencer is not None)
        )
        yield CounterMetricFamily(
            "tickhub_lease_gained", "Times this replica took the ingest lease.", value=hub.lease.gained
        )
        yield CounterMetricFamily(
            "tickhub_broker_claimed",
            "Ticks this replica's writer took over from replicas that left them.",
            value=hub.broker.claimed,
        )
        yield CounterMetricFamily(
            "tickhub_broker_gaps",
            "Times the log trimmed ticks this replica had not read (its subscribers resynced).",
            value=hub.broker.gaps,
        )
        yield from _composite_metrics(hub)


def _composite_metrics(hub: Hub) -> Iterator[Metric]:
    published = CounterMetricFamily("tickhub_composite_published", "Composite prices published.", labels=["instrument"])
    skipped = CounterMetricFamily(
        "tickhub_composite_skipped",
        "Composite computations that published nothing: unchanged, no fresh venue, or all outliers.",
        labels=["instrument", "reason"],
    )
    exclusions = CounterMetricFamily(
        "tickhub_composite_outlier_exclusions",
        "Times a venue was left out of a composite as an outlier.",
        labels=["instrument", "source", "symbol"],
    )
    venues = GaugeMetricFamily(
        "tickhub_composite_venues", "Venues of an instrument by state right now.", labels=["instrument", "state"]
    )
    for book, result in hub.composite.evaluate_all():
        name = book.instrument.name
        published.add_metric([name], book.published)
        for reason, value in book.skipped.items():
            skipped.add_metric([name, reason], value)
        for venue in book.venues:
            exclusions.add_metric([name, venue.source, venue.symbol], venue.exclusions)
        for state, members in (("fresh", result.used), ("excluded", result.excluded), ("stale", result.stale)):
            venues.add_metric([name, state], len(members))
    yield from (published, skipped, exclusions, venues)
