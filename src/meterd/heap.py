"""Garbage-collector settings for a long-running poller (the daemon, the simulators).

Strategy: CPython's cyclic collector runs a young collection every 700 container allocations and
every so often a full one that walks every tracked object in the process.  A daemon polling
10,000 meters allocates a few dozen containers per request (coroutine frames, futures, frames,
readings, paho's message objects) and holds a large, long-lived heap built at start-up (config,
poll plan, meter targets, transports): measured on the terminal benchmark, a fifth of the
daemon's CPU went to the collector, mostly re-walking objects that never die.

:func:`settle_heap`, called once start-up is done, collects what start-up left behind, then
``gc.freeze()``\\ s the survivors (the collector no longer walks them; they are not freed by it
either, which is what they are for: they live as long as the process) and raises the young
generation's threshold, so the short-lived garbage of a request is mostly gone by reference
counting before a collection looks at it.  Cycles created later are still collected.
"""

from __future__ import annotations

import gc
from typing import Final

# (young, middle, old): a young collection every 20,000 container allocations instead of 700;
# the middle and old generations keep CPython's ratios
THRESHOLDS: Final = (20_000, 10, 10)


def settle_heap(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Collect, freeze what is left (start-up's long-lived objects), collect young garbage less
    often.  Process-wide; idempotent in effect (a second call freezes what was built since)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


__all__ = ["THRESHOLDS", "settle_heap"]
