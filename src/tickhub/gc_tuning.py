"""The hub's garbage-collector settings, applied once it has started (``TICKHUB_GC``).

CPython's cyclic collector runs a young-generation pass every 700 net allocations of container objects.
The hub allocates a few per tick (the tick, its fields, the batch lists) and holds up to a backlog of
them, so at ingest speed it ran ~1,000 young passes and ~10 full ones per 400k ticks, each full pass
walking every live tick and every module and function loaded at start-up (BENCHMARKS.md, "Garbage
collector"). ``tuned``, after start-up: one collection, then :func:`gc.freeze` moves everything alive
(modules, the app, settings: objects that live as long as the process) out of the collector's sight,
and the young threshold rises to :data:`YOUNG_THRESHOLD`, a pass every few milliseconds at full
ingest. The collector still runs: a cycle is freed at the next pass of its generation.
``python`` keeps the interpreter's defaults.
"""

from __future__ import annotations

import gc

#: Young-generation threshold with ``tuned``: fewer passes, each a few milliseconds at most at full ingest
#: (measured at 50,000: ~30 ms a pass, too long for the latency promise).
YOUNG_THRESHOLD = 10_000


def apply(mode: str) -> None:
    """Tune the collector for a started hub process (``tuned``) or leave it (``python``)."""
    if mode != "tuned":
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
