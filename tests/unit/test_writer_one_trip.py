"""BatchWriter sends a batch of readings and one of attempts to the worker thread in one trip;
what the store took leaves the queue even when the other half failed, and nothing else does."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.readings import Reading
from meterd.storage import Attempt, BatchWriter

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def reading(i: int) -> Reading:
    return Reading("000000000001", "energy.active.import.total", T0 + timedelta(minutes=i), Decimal(i), "kWh")


def attempt(i: int) -> Attempt:
    return Attempt("000000000001", "bus1", "00010000", T0 + timedelta(minutes=i), "ok", 0.1)


class HalfDownStore:
    """Readings always go in; attempts fail while ``attempts_down``.  Records the thread of each call."""

    def __init__(self) -> None:
        self.attempts_down = False
        self.readings: list[Reading] = []
        self.attempts: list[Attempt] = []
        self.threads: list[tuple[str, int]] = []

    def write_readings(self, readings: Sequence[Reading]) -> int:
        self.threads.append(("readings", threading.get_ident()))
        self.readings.extend(readings)
        return len(readings)

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        self.threads.append(("attempts", threading.get_ident()))
        if self.attempts_down:
            raise sqlite3.OperationalError("database is locked")
        self.attempts.extend(attempts)


@pytest.mark.asyncio
async def test_a_batch_of_each_goes_in_one_trip_readings_first() -> None:
    store = HalfDownStore()
    writer = BatchWriter(store, batch_size=3)
    writer.add_many(reading(i) for i in range(5))
    writer.add_attempts(attempt(i) for i in range(4))
    await writer.flush()
    assert [what for what, _ in store.threads] == ["readings", "attempts", "readings", "attempts"]
    assert store.threads[0][1] == store.threads[1][1]  # one worker call for the pair
    assert store.readings == [reading(i) for i in range(5)]
    assert store.attempts == [attempt(i) for i in range(4)]
    assert (writer.written, writer.attempts_written, writer.pending, writer.pending_attempts) == (5, 4, 0, 0)
    assert writer.write_seconds > 0


@pytest.mark.asyncio
async def test_readings_taken_leave_the_queue_when_the_attempts_after_them_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HalfDownStore()
    writer = BatchWriter(store, batch_size=10)
    writer.add_many(reading(i) for i in range(4))
    writer.add_attempts(attempt(i) for i in range(3))
    store.attempts_down = True
    with pytest.raises(sqlite3.OperationalError):
        await writer.flush()
    assert store.readings == [reading(i) for i in range(4)] and writer.pending == 0 and writer.written == 4
    assert writer.pending_attempts == 3 and writer.failing
    assert "0 readings and 3 attempts kept for retry" in caplog.text

    writer.add(reading(4))
    store.attempts_down = False
    await writer.flush()
    assert store.readings == [reading(i) for i in range(5)]  # each once, in order
    assert store.attempts == [attempt(i) for i in range(3)]
    assert not writer.failing and writer.pending_attempts == 0
    await writer.close()
