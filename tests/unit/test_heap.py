"""The process's garbage-collector policy (meterd.heap): pauses nest and overlap across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from meterd.heap import collector_paused


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()  # as it was: a test that switched it off must not leave it off


def test_overlapping_pauses_keep_the_collector_off_until_the_last_one_ends() -> None:
    """The prepaid pass (a worker thread) and the loop's observe pause may end in either order:
    the collector stays off while either is in progress (before: the first to end switched it on)."""
    first, second = ExitStack(), ExitStack()
    first.enter_context(collector_paused())
    second.enter_context(collector_paused())
    first.close()
    assert not gc.isenabled()
    second.close()
    assert gc.isenabled()


def test_pauses_from_many_threads_leave_the_collector_as_they_found_it() -> None:
    inside = threading.Barrier(8)
    states: list[bool] = []

    def work() -> None:
        with collector_paused():
            inside.wait()  # all eight are paused at once here
            states.append(gc.isenabled())
            inside.wait()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert states == [False] * 8
    assert gc.isenabled()


def test_a_process_that_switched_the_collector_off_keeps_it_off() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
