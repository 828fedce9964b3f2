"""Repeated errors are logged once per kind per interval with a count (meterd.logthrottle); time is
stepped by hand."""

from __future__ import annotations

import logging

import pytest

from meterd.logthrottle import MAX_KINDS, LogThrottle, ThrottleFilter, flush_all, install


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_event_is_logged_the_rest_counted_and_summarised_with_the_next(caplog, clock):
    throttle = LogThrottle(60, clock=clock)
    log = logging.getLogger("meterd.test.throttle")
    with caplog.at_level(logging.WARNING, logger="meterd.test.throttle"):
        for n in range(1000):
            throttle.log(log, logging.WARNING, "accept", "accept failed: %d", n)
            clock.now += 0.01  # 1000 events in 10 s
        assert messages(caplog) == ["accept failed: 0"]
        clock.now += 60
        assert throttle.log(log, logging.WARNING, "accept", "accept failed: %d", 1000)
    assert messages(caplog) == ["accept failed: 0", "999 more like this in the last 60 s: accept",
                                "accept failed: 1000"]


def test_kinds_and_loggers_are_throttled_apart(caplog, clock):
    throttle = LogThrottle(60, clock=clock)
    a, b = logging.getLogger("meterd.test.a"), logging.getLogger("meterd.test.b")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            throttle.log(a, logging.WARNING, "x", "a x")
            throttle.log(a, logging.WARNING, "y", "a y")
            throttle.log(b, logging.WARNING, "x", "b x")
    assert messages(caplog) == ["a x", "a y", "b x"]


def test_flush_reports_a_burst_that_stopped_once_its_window_is_over(caplog, clock):
    throttle = LogThrottle(60, clock=clock)
    log = logging.getLogger("meterd.test.flush")
    with caplog.at_level(logging.ERROR, logger="meterd.test.flush"):
        for _ in range(5):
            throttle.log(log, logging.ERROR, "store", "store write failed")
        clock.now += 59
        assert throttle.flush() == 0  # the window is not over
        clock.now += 1
        assert throttle.flush() == 1
        assert throttle.flush() == 0  # reported once
        throttle.log(log, logging.ERROR, "store", "store write failed")  # a new window: logged, no summary
    assert messages(caplog) == ["store write failed", "4 more like this in the last 60 s: store",
                                "store write failed"]
    assert caplog.records[1].levelno == logging.ERROR


def test_a_lone_event_per_window_is_always_logged(caplog, clock):
    throttle = LogThrottle(10, clock=clock)
    log = logging.getLogger("meterd.test.lone")
    with caplog.at_level(logging.WARNING, logger="meterd.test.lone"):
        for n in range(3):
            throttle.log(log, logging.WARNING, "k", "event %d", n)
            clock.now += 10
    assert messages(caplog) == ["event 0", "event 1", "event 2"]


def test_filter_throttles_a_foreign_logger_by_message_template(caplog, clock):
    throttle = LogThrottle(60, clock=clock)
    foreign = logging.getLogger("meterd.test.foreign")
    flt = ThrottleFilter(throttle)
    foreign.addFilter(flt)
    try:
        with caplog.at_level(logging.WARNING, logger="meterd.test.foreign"):
            for fd in range(500):
                try:
                    raise OSError(24, "Too many open files")
                except OSError:
                    foreign.error("socket.accept() out of system resource\nsocket: fd=%d", fd, exc_info=True)
                foreign.warning("Invalid HTTP request received.")
            clock.now += 61
            foreign.warning("Invalid HTTP request received.")
    finally:
        foreign.removeFilter(flt)
    assert messages(caplog) == [
        "socket.accept() out of system resource\nsocket: fd=0",
        "Invalid HTTP request received.",
        "499 more like this in the last 60 s: Invalid HTTP request received.",
        "Invalid HTTP request received.",
    ]
    assert caplog.records[0].exc_info is not None  # the first one keeps its traceback


def test_install_is_idempotent():
    name = "meterd.test.install"
    first = install(name, LogThrottle(60))
    try:
        assert install(name) is first
        assert logging.getLogger(name).filters.count(first) == 1
    finally:
        logging.getLogger(name).removeFilter(first)


def test_kinds_remembered_are_bounded(caplog, clock):
    throttle = LogThrottle(60, clock=clock)
    log = logging.getLogger("meterd.test.bound")
    with caplog.at_level(logging.WARNING, logger="meterd.test.bound"):
        for n in range(MAX_KINDS + 10):
            throttle.log(log, logging.WARNING, f"kind {n}", "event %d", n)
        assert len(throttle._windows) == MAX_KINDS
        assert len(caplog.records) == MAX_KINDS + 10  # new kinds past the bound are logged, not remembered
        clock.now += 60
        throttle.log(log, logging.WARNING, "new kind", "new")
        assert len(throttle._windows) == 1  # the expired, quiet ones were forgotten


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        LogThrottle(0)


def test_flush_all_reaches_every_throttle_alive(caplog, clock):
    first, second = LogThrottle(60, clock=clock), LogThrottle(60, clock=clock)
    log = logging.getLogger("meterd.test.all")
    with caplog.at_level(logging.WARNING, logger="meterd.test.all"):
        for throttle in (first, second, first):
            throttle.log(log, logging.WARNING, "k", "event")
            throttle.log(log, logging.WARNING, "k", "event")
        clock.now += 60
        assert flush_all() >= 2
    mine = [r.getMessage() for r in caplog.records if r.name == "meterd.test.all"]
    assert mine[:2] == ["event", "event"]
    assert sorted(mine[2:]) == ["1 more like this in the last 60 s: k", "3 more like this in the last 60 s: k"]
