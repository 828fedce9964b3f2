"""Daemon._run_channel's timing: rounds on their interval's ticks; after an overrun the next round
starts at once (late) and the ticks that passed are counted, none queued."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from meterd.collector.daemon import Daemon
from meterd.supervise import Backoff


def _runner(interval: float) -> SimpleNamespace:
    poll = SimpleNamespace(poll=SimpleNamespace(name="p", interval=interval))
    return SimpleNamespace(plan=SimpleNamespace(polls=(poll,)), next_due={}, overruns=0, backoff=Backoff())


async def _starts(durations: list[float], interval: float) -> tuple[list[float], SimpleNamespace]:
    """When each round started (s after the first), rounds lasting ``durations`` in turn."""
    starts: list[float] = []
    stop = asyncio.Event()
    runner = _runner(interval)

    async def run_round(_runner: object, _planned: object) -> None:
        starts.append(time.monotonic())
        await asyncio.sleep(durations[len(starts) - 1])
        if len(starts) == len(durations):
            stop.set()

    async def first_registration(_runner: object, _stop: object) -> bool:
        return False  # no DTU to wait for

    fake = SimpleNamespace(run_round=run_round, ownership=None,  # a single node: every channel is its own
                           _first_registration=first_registration)
    await asyncio.wait_for(Daemon._run_channel(fake, runner, stop), 10)  # type: ignore[arg-type]
    return [s - starts[0] for s in starts], runner


@pytest.mark.asyncio
async def test_rounds_shorter_than_the_interval_keep_to_its_ticks() -> None:
    starts, runner = await _starts([0.01, 0.01, 0.01], 0.2)
    assert starts[1] == pytest.approx(0.2, abs=0.05) and starts[2] == pytest.approx(0.4, abs=0.05)
    assert runner.overruns == 0


@pytest.mark.asyncio
async def test_after_an_overrun_the_next_round_starts_at_once_and_the_missed_ticks_are_counted() -> None:
    starts, runner = await _starts([0.5, 0.01, 0.01], 0.2)  # the first round spans ticks 0.2 and 0.4
    assert starts[1] == pytest.approx(0.5, abs=0.05)  # at once, not at the next tick (0.6)
    assert starts[2] == pytest.approx(0.7, abs=0.05)  # then on the interval again, from there
    assert runner.overruns == 2
