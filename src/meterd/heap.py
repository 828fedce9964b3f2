"""The process's one garbage-collector policy, set by whoever owns the process.

Strategy: CPython's cyclic collector runs a young collection every 700 container allocations and
every so often a full one that walks every tracked object in the process.  A daemon polling
10,000 meters allocates a few dozen containers per request (coroutine frames, futures, frames,
readings, paho's message objects) and holds a large, long-lived heap built at start-up (config,
poll plan, meter targets, transports): measured on the terminal benchmark, a fifth of the
daemon's CPU went to the collector, mostly re-walking objects that never die.

Who sets what:

- The process owner -- the ``meterd`` command for ``run``, ``demo`` and ``simulate``, a benchmark
  for itself -- calls :func:`settle_heap` once, when start-up has built the long-lived objects and
  before the work begins: it collects what start-up left behind, ``gc.freeze()``\\ s the survivors
  (the collector no longer walks them; they are not freed by it either, which is what they are
  for: they live as long as the process) and raises the young generation's threshold, so the
  short-lived garbage of a request is mostly gone by reference counting before a collection
  looks at it.  Cycles created later are still collected.  Library code (the collector, control,
  the API) never changes the process's settings.
- Code that builds a large, short-lived heap of its own in one go (a prepaid pass over a district:
  millions of objects that all live until its end and make no cycles worth collecting early)
  wraps it in :func:`collector_paused`.  Pauses nest and may overlap across threads (the pass runs
  in a worker thread while the event loop observes a round): a counter under a lock keeps the
  collector off from the first pause's start to the last one's end, then restores what was there
  before -- a process that had switched the collector off keeps it off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# (young, middle, old): a young collection every 20,000 container allocations instead of 700;
# the middle and old generations keep CPython's ratios
THRESHOLDS: Final = (20_000, 10, 10)

_lock = threading.Lock()
_pauses = 0  # pauses in progress, all threads
_was_enabled = False  # the collector's state when the first of them began


def settle_heap(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Collect, freeze what is left (start-up's long-lived objects), collect young garbage less
    often.  Process-wide: for the process owner, once start-up is done (a second call freezes
    what was built since)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while any pause is in progress, in any thread; re-entrant."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


__all__ = ["THRESHOLDS", "collector_paused", "settle_heap"]
