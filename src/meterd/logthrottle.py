"""Repeated errors are logged once per kind per interval, with a count -- never once per event.

Under load the same failure can happen thousands of times a second (a flood of bad connections, a
store that refuses every write, a terminal pushing garbage); a log line per event fills the disk
and buries the one line an operator needs.  :class:`LogThrottle` keeps, per ``(logger, kind)``, a
window of ``interval`` seconds that starts with an event that is logged.  Further events of that
kind inside the window are only counted.  The count is reported in one summary line::

    <N> more like this in the last 60 s: <kind>

at the first event of that kind after the window (just before that event's own line), or by
:meth:`LogThrottle.flush` once the window is over, whichever comes first -- the daemon calls
:func:`flush_all` every few seconds, so a burst that stops is still reported.

Two ways in:

* :meth:`LogThrottle.log` for our own call sites.  A component that logs per event keeps a
  throttle of its own, as it keeps its own statistics (``self._log = LogThrottle()``;
  ``self._log.log(log, logging.WARNING, "malformed", "MQTT: dropped ...", ...)``), so two listeners
  or two test cases never share windows; :func:`flush_all` reaches every throttle alive;
* :class:`ThrottleFilter` for loggers we do not own (uvicorn's ``uvicorn.error``, ``asyncio``):
  a :class:`logging.Filter` whose kind is the first line of the record's message template; a
  suppressed record is dropped (with its traceback), the summary is emitted through the same
  logger and let through.

Time comes from the ``clock`` given (monotonic seconds), so tests step it by hand.  The number of
kinds remembered is bounded (:data:`MAX_KINDS`): kinds whose window is over and that have nothing
to report are forgotten first; past the bound a new kind is logged without being remembered.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

MAX_KINDS: Final = 4096
DEFAULT_INTERVAL: Final = 60.0
SUMMARY_ATTR: Final = "meterd_throttle_summary"  # set on summary records: a ThrottleFilter lets them through


@dataclass(slots=True)
class _Window:
    started: float
    level: int
    suppressed: int = 0


class LogThrottle:
    """Per ``(logger name, kind)``: the first event of a window is logged, the rest are counted."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, *, clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()  # loggers are called from worker threads too
        _ALIVE.add(self)

    def admit(self, logger_name: str, kind: str, level: int = logging.WARNING) -> tuple[bool, int, float]:
        """Whether an event of ``kind`` is to be logged now; with it, how many events of that kind
        were counted and not logged in the window that just ended, and that window's length."""
        now = self.clock()
        key = (logger_name, kind)
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self.interval:
                window.suppressed += 1
                return False, 0, 0.0
            earlier = (window.suppressed, now - window.started) if window is not None else (0, 0.0)
            if window is None and len(self._windows) >= MAX_KINDS:
                self._forget(now)
                if len(self._windows) >= MAX_KINDS:
                    return True, 0, 0.0  # logged, not remembered
            self._windows[key] = _Window(now, level)
            return True, earlier[0], min(earlier[1], self.interval)

    def _forget(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if w.suppressed == 0 and now - w.started >= self.interval]:
            del self._windows[key]

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: Any,
            exc_info: Any = None) -> bool:
        """``logger.log(level, msg, *args)`` unless ``kind`` was logged less than ``interval`` ago;
        whether it was logged."""
        if not logger.isEnabledFor(level):
            return False
        logged, suppressed, span = self.admit(logger.name, kind, level)
        if suppressed:
            summarize(logger, level, kind, suppressed, span)
        if logged:
            logger.log(level, msg, *args, exc_info=exc_info)
        return logged

    def flush(self) -> int:
        """Report every window that is over and counted events; how many summary lines."""
        now = self.clock()
        due: list[tuple[str, str, int, int, float]] = []
        with self._lock:
            for (name, kind), window in list(self._windows.items()):
                if now - window.started >= self.interval:
                    if window.suppressed:
                        due.append((name, kind, window.level, window.suppressed, self.interval))
                    del self._windows[(name, kind)]
        for name, kind, level, suppressed, span in due:
            summarize(logging.getLogger(name), level, kind, suppressed, span)
        return len(due)


def summarize(logger: logging.Logger, level: int, kind: str, suppressed: int, span: float) -> None:
    logger.log(level, "%d more like this in the last %.0f s: %s", suppressed, span, kind,
               extra={SUMMARY_ATTR: True})


def record_kind(record: logging.LogRecord) -> str:
    """A record's kind for :class:`ThrottleFilter`: the first line of its message template (the
    template, not the formatted text, so peers and fds do not make every record a kind of its own)."""
    return str(record.msg).split("\n", 1)[0].strip()[:200]


class ThrottleFilter(logging.Filter):
    """Throttles a logger we do not own; attach with ``logger.addFilter`` (see :func:`install`)."""

    def __init__(self, throttle: LogThrottle, kind: Callable[[logging.LogRecord], str] = record_kind) -> None:
        super().__init__()
        self.throttle = throttle
        self.kind = kind

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY_ATTR, False):
            return True
        kind = self.kind(record)
        logged, suppressed, span = self.throttle.admit(record.name, kind, record.levelno)
        if suppressed:
            summarize(logging.getLogger(record.name), record.levelno, kind, suppressed, span)
        return logged


def install(logger_name: str, throttle: LogThrottle | None = None) -> ThrottleFilter:
    """Throttle ``logger_name`` (once: a second call returns the filter already there)."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, ThrottleFilter):
            return existing
    found = ThrottleFilter(throttle or THROTTLE)
    logger.addFilter(found)
    return found


_ALIVE: weakref.WeakSet[LogThrottle] = weakref.WeakSet()


def flush_all() -> int:
    """:meth:`LogThrottle.flush` on every throttle alive; how many summary lines."""
    return sum(throttle.flush() for throttle in list(_ALIVE))


THROTTLE: Final = LogThrottle()  # for the filters on loggers we do not own (one per process)
