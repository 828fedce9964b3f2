"""Batch readings and attempts in memory and write them to a store off the event loop.

Channel workers call :meth:`BatchWriter.add` (cheap, synchronous) for every decoded reading.  A
background task started by :meth:`BatchWriter.start` writes a batch when ``batch_size`` readings
(or attempts) are waiting, or when ``flush_interval`` has passed, through
``asyncio.to_thread`` so SQLite's fsync never stalls the polling loop.

Nothing is dropped: a batch leaves the queue only after the store has taken it.  When a write
fails the batch stays at the head of the queue and the next flush retries it, in order; the
failure is logged once, and once more when writes recover.  The store's writes must therefore be
idempotent (:class:`~meterd.storage.sqlite.SqliteStore` replaces readings by key).  Readings wait
in memory only; surviving a crash while the store is down is the job of a durable spool.

Writes are serialised by a lock, so an explicit :meth:`flush` and the background task never
interleave or reorder batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from meterd.readings import Reading
from meterd.storage.sqlite import Attempt

log = logging.getLogger(__name__)


class ReadingSink(Protocol):
    """What a :class:`BatchWriter` needs of a store; called from a worker thread."""

    def write_readings(self, readings: Sequence[Reading]) -> int: ...

    def record_attempts(self, attempts: Sequence[Attempt]) -> None: ...


class BatchWriter:
    def __init__(
        self,
        store: ReadingSink,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """``sleep`` waits out the flush interval; tests pass a fake one to control time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._sleep = sleep
        self._readings: list[Reading] = []
        self._attempts: list[Attempt] = []
        self._write_lock = asyncio.Lock()
        self._full = asyncio.Event()  # a batch is ready
        self._stop = asyncio.Event()  # close() was called
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0  # consecutive failed writes; >0 means the store is down
        self.written = 0  # readings the store has taken
        self.attempts_written = 0
        # seconds spent waiting for store writes (the worker thread's writes and the trips to and
        # from it); written / write_seconds is how fast the writer can drain a queue
        self.write_seconds = 0.0

    @property
    def pending(self) -> int:
        """Readings waiting to be written."""
        return len(self._readings)

    @property
    def pending_attempts(self) -> int:
        return len(self._attempts)

    @property
    def failing(self) -> bool:
        """Whether the last write failed (the store is down)."""
        return self._failures > 0

    # --- queueing ------------------------------------------------------------------------------

    def add(self, reading: Reading) -> None:
        self._check_open()
        if reading.timestamp.tzinfo is None:
            # Refuse here, where the caller can see it; in the batch it would block every write.
            raise ValueError(f"reading {reading.meter}/{reading.quantity} has a naive timestamp")
        self._readings.append(reading)
        self._wake_if_due()

    def add_many(self, readings: Iterable[Reading]) -> None:
        """:meth:`add` of each, checked first and queued at once (a round's readings): a reading
        with a naive timestamp refuses the lot, so none is queued twice on a retry."""
        self._check_open()
        batch = readings if isinstance(readings, list) else list(readings)
        for reading in batch:
            if reading.timestamp.tzinfo is None:
                raise ValueError(f"reading {reading.meter}/{reading.quantity} has a naive timestamp")
        self._readings.extend(batch)
        self._wake_if_due()

    def add_attempts(self, attempts: Iterable[Attempt]) -> None:
        self._check_open()
        self._attempts.extend(attempts)
        self._wake_if_due()

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("BatchWriter is closed")

    def _due(self) -> bool:
        return len(self._readings) >= self.batch_size or len(self._attempts) >= self.batch_size

    def _wake_if_due(self) -> None:
        if self._due():
            self._full.set()

    # --- writing -------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything queued so far; raises the store's error if a write fails.

        Only what was queued when the flush began is written, a batch of readings and one of
        attempts at a time, so under a steady stream of new readings a flush still ends and
        attempts are never starved behind readings.
        """
        async with self._write_lock:
            readings_left, attempts_left = len(self._readings), len(self._attempts)
            while readings_left > 0 or attempts_left > 0:
                batch = self._readings[: min(self.batch_size, readings_left)]
                batch_a = self._attempts[: min(self.batch_size, attempts_left)]
                taken = [False, False]
                failure: Exception | None = None
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(self._write_pair, batch, batch_a, taken)
                except Exception as exc:  # noqa: BLE001 -- raised again below, once the taken half is off the queue
                    failure = exc
                self.write_seconds += time.perf_counter() - started
                # Only what the store has taken may leave the queue (readings even when the
                # attempts after them failed).
                if taken[0]:
                    del self._readings[: len(batch)]
                    self.written += len(batch)
                    readings_left -= len(batch)
                if taken[1]:
                    del self._attempts[: len(batch_a)]
                    self.attempts_written += len(batch_a)
                    attempts_left -= len(batch_a)
                if failure is not None:
                    self._failed(failure)
                    raise failure
                if self._failures:
                    log.warning("store writes recovered after %d failed attempts", self._failures)
                    self._failures = 0

    def _write_pair(self, readings: list[Reading], attempts: list[Attempt], taken: list[bool]) -> None:
        """In the worker thread: both batches in one trip (a busy loop makes few trips a second);
        ``taken`` tells which of the two the store has taken."""
        if readings:
            self.store.write_readings(readings)
            taken[0] = True
        if attempts:
            self.store.record_attempts(attempts)
            taken[1] = True

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        if self._failures == 1:
            log.error(
                "store write failed; %d readings and %d attempts kept for retry",
                len(self._readings),
                len(self._attempts),
                exc_info=exc,
            )

    def start(self) -> None:
        """Start the background flusher (needs a running event loop); idempotent."""
        self._check_open()
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="meterd-batch-writer")

    async def close(self) -> None:
        """Stop the background flusher and write everything still queued.

        If the store is down the error is raised and the readings stay in :attr:`pending`.
        """
        self._closing = True
        self._stop.set()
        if self._task is not None:
            # Let it finish on its own: cancelling mid-write would lose track of a batch.
            await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._closing:
            await self._wait()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001, S110 -- logged by _failed; the batch stays queued for the next round
                pass

    async def _wait(self) -> None:
        """Until a batch is full, the interval has passed, or close() is called.

        While the store is down only the interval counts, so a stream of readings does not turn
        into a stream of retries.
        """
        if self._closing or (self._due() and not self.failing):
            return
        self._full.clear()  # stale: whatever set it has been flushed since
        waiters = [
            asyncio.ensure_future(self._sleep(self.flush_interval)),
            asyncio.ensure_future(self._stop.wait()),
        ]
        if not self.failing:
            waiters.append(asyncio.ensure_future(self._full.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
