"""Back-off and the supervisor of long-running tasks (issue #14: no task dies silently).

Time is passed in: ``pause`` records the delays instead of sleeping and ``monotonic`` is a counter
the test moves, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from meterd.supervise import Backoff, supervise


def test_backoff_doubles_from_one_second_and_is_capped_at_sixty() -> None:
    b = Backoff()
    assert [b.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    b.reset()
    assert b.next_delay() == 1


def test_backoff_never_overflows_after_very_many_failures() -> None:
    b = Backoff(failures=10_000)
    assert b.next_delay() == 60


class FakeTime:
    """A monotonic clock the pause moves forward: "sleeping" costs no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def pause(self, stop: asyncio.Event, seconds: float) -> bool:
        self.delays.append(seconds)
        self.now += seconds
        return stop.is_set()


async def test_a_failing_body_is_logged_and_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    clock, stop, runs = FakeTime(), asyncio.Event(), []

    async def body() -> None:
        runs.append(clock.now)
        if len(runs) == 5:
            stop.set()
            return
        raise RuntimeError(f"broken #{len(runs)}")

    with caplog.at_level(logging.ERROR, logger="meterd.supervise"):
        await supervise("service x", body, stop, pause=clock.pause, monotonic=clock.monotonic)
    assert clock.delays == [1, 2, 4, 8]
    assert runs == [0, 1, 3, 7, 15]
    failures = [r for r in caplog.records if "service x failed" in r.getMessage()]
    assert len(failures) == 4 and failures[0].exc_info is not None
    assert "RuntimeError: broken #1" in failures[0].getMessage() and "restarting in 1 s" in failures[0].getMessage()


async def test_a_body_that_returns_before_stop_is_restarted_too(caplog: pytest.LogCaptureFixture) -> None:
    clock, stop, runs = FakeTime(), asyncio.Event(), []

    async def body() -> None:
        runs.append(1)
        if len(runs) == 3:
            stop.set()

    with caplog.at_level(logging.ERROR, logger="meterd.supervise"):
        await supervise("api", body, stop, pause=clock.pause, monotonic=clock.monotonic)
    assert len(runs) == 3 and clock.delays == [1, 2]
    assert sum("api ended by itself" in r.getMessage() for r in caplog.records) == 2


async def test_a_body_that_worked_for_a_while_restarts_after_the_first_delay_again() -> None:
    clock, stop, runs = FakeTime(), asyncio.Event(), []

    async def body() -> None:
        runs.append(1)
        if len(runs) == 4:
            clock.now += 3600  # an hour of good work, then trouble again
        if len(runs) == 6:
            stop.set()
            return
        raise OSError("disk trouble")

    await supervise("quality rollup", body, stop, pause=clock.pause, monotonic=clock.monotonic)
    assert clock.delays == [1, 2, 4, 1, 2]


async def test_failures_are_handed_to_on_failure_and_cancellation_ends_the_supervisor() -> None:
    clock, stop, seen = FakeTime(), asyncio.Event(), []
    started = asyncio.Event()

    async def body() -> None:
        if not seen:
            raise ValueError("first")
        started.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = asyncio.create_task(supervise("x", body, stop, pause=clock.pause, monotonic=clock.monotonic,
                                         on_failure=seen.append))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [type(e) for e in seen] == [ValueError]
