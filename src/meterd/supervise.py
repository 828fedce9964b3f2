"""Long-running tasks that never die silently: restart with back-off, log every abnormal end.

The daemon runs many tasks side by side in one event loop (a task per channel, the quality rollup,
the spool replay, the prepaid / analytics / sync / API services).  An exception that escapes one of
them would otherwise end only that task, with nothing logged until shutdown gathers it, and the
work it did (polling a bus, charging accounts) would simply stop.  :func:`supervise` runs such a
task's body and, when the body raises or returns before ``stop``, logs it with its traceback and
starts it again after an exponential back-off (:class:`Backoff`: 1 s, 2 s, 4 s ... capped at 60 s).
A body that ran healthily for at least the cap before failing starts again from the first delay.

Waiting and the clock are passed in (``pause``, ``monotonic``), so tests run without real sleeps.
This module imports nothing of meterd: any layer may use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

FIRST_DELAY: Final = 1.0
MAX_DELAY: Final = 60.0

#: Wait ``seconds`` unless ``stop`` is set first; True when ``stop`` was set.
Pause = Callable[[asyncio.Event, float], Awaitable[bool]]
Monotonic = Callable[[], float]


@dataclass(slots=True)
class Backoff:
    """Exponential back-off: ``first``, ``first * factor``, ... never more than ``cap`` seconds."""

    first: float = FIRST_DELAY
    cap: float = MAX_DELAY
    factor: float = 2.0
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next restart; each call counts one more failure in a row."""
        delay = min(self.cap, self.first * self.factor ** min(self.failures, 64))
        self.failures += 1
        return delay

    def reset(self) -> None:
        """The task did its work again: the next failure waits ``first`` seconds."""
        self.failures = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, cut short by ``stop``; True when ``stop`` is set."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def describe(exc: BaseException) -> str:
    """``termios.error: (22, 'Invalid argument')``: the type is named, since some say nothing alone."""
    name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    text = str(exc)
    return f"{name}: {text}" if text else name


async def supervise(
    name: str,
    body: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    backoff: Backoff | None = None,
    pause: Pause = wait_or_stop,
    monotonic: Monotonic = time.monotonic,
    on_failure: Callable[[BaseException | None], Awaitable[None] | None] | None = None,
) -> None:
    """Run ``body()`` until ``stop`` is set, restarting it with back-off whenever it ends early.

    An exception (or a return while ``stop`` is not set) is logged -- with the traceback, since it
    is a bug or a failure nobody translated -- and handed to ``on_failure`` (None for an early
    return) before the pause.  Cancellation is not a failure: it ends the supervisor too.
    """
    backoff = backoff if backoff is not None else Backoff()
    while not stop.is_set():
        started = monotonic()
        failure: BaseException | None = None
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a supervised task's fault is logged and it restarts
            failure = exc
        if stop.is_set():
            return
        if monotonic() - started >= backoff.cap:
            backoff.reset()  # it had been working for a while: this is a new run of trouble
        delay = backoff.next_delay()
        if failure is not None:
            log.error("%s failed (%s); restarting in %g s", name, describe(failure), delay, exc_info=failure)
        else:
            log.error("%s ended by itself; restarting in %g s", name, delay)
        if on_failure is not None:
            try:
                result = on_failure(failure)
                if result is not None:
                    await result
            except Exception:
                log.exception("%s: recording the failure failed", name)
        if await pause(stop, delay):
            return


def log_task_failure(task: asyncio.Task[object]) -> None:
    """A done callback for a background task nobody awaits until shutdown: its failure is logged
    when it happens, not found (or lost) at the end."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed (%s)", task.get_name(), describe(exc), exc_info=exc)


__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "Backoff",
    "Pause",
    "describe",
    "log_task_failure",
    "supervise",
    "wait_or_stop",
]
