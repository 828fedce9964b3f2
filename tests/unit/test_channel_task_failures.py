"""A channel never stops polling silently (issue #14).

* An exception from the link that is none of meterd's (here a transport whose ``open`` raises a
  ``RuntimeError``) is a ``link`` failure: counted, retried, logged once with its traceback.
* A round that raises anyway (here the daemon's ``on_round`` hook) is logged, counted as a ``link``
  failure in the channel's statistics and as ``link`` attempts, and the channel starts again after
  a back-off; the pause is passed in, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from pathlib import Path

import pytest

from meterd.collector.channel import Channel, FailureKind, TransactionError
from meterd.collector.daemon import Daemon
from meterd.collector.transports.base import Transport
from meterd.config.loader import parse_config
from meterd.ports import free_port
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.storage.sqlite import SqliteStore


class BrokenOpen(Transport):
    """A transport with a bug: ``open`` raises something no layer translated."""

    def __init__(self) -> None:
        super().__init__("bus1")
        self.opens = 0

    @property
    def is_open(self) -> bool:
        return False

    async def open(self) -> None:
        self.opens += 1
        raise RuntimeError("driver bug")

    async def write(self, data: bytes) -> None:
        raise AssertionError("never opened")

    async def close(self) -> None:
        pass


async def test_an_untranslated_exception_from_the_link_is_a_link_failure(caplog: pytest.LogCaptureFixture) -> None:
    transport = BrokenOpen()
    channel = Channel("bus1", transport, retries=1)
    request = encode_request(ReadRequest("000000000001", 0x0001FF00))
    with caplog.at_level(logging.WARNING, logger="meterd.collector.channel"):
        for _ in range(3):
            with pytest.raises(TransactionError) as info:
                await channel.transact(request)
            assert info.value.kind is FailureKind.LINK
            assert "RuntimeError: driver bug" in str(info.value)
    assert transport.opens == 6  # each transaction tried twice (retries = 1): reopened every time
    assert channel.stats.failures == {FailureKind.LINK: 6}
    said = [r for r in caplog.records if "link down" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None  # once per spell of trouble, with the traceback


def _free_port() -> int:
    return free_port()


def _config(data_dir: Path):
    text = f"""
[store]
data_dir = "{data_dir}"
[channels.c0]
tcp = {{ host = "127.0.0.1", port = {_free_port()} }}
retries = 0
[[meters]]
address = "000000000001"
channel = "c0"
[[meters]]
address = "000000000002"
channel = "c0"
[[polls]]
name = "rt"
interval = "1h"
items = ["0001FF00", "0201FF00"]
"""
    return parse_config(tomllib.loads(text), source="test.toml")


async def test_a_round_that_raises_restarts_the_channel_with_backoff(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    calls: list[int] = []
    delays: list[float] = []

    def on_round(result) -> None:
        calls.append(1)
        if len(calls) <= 4:
            raise RuntimeError(f"hook bug #{len(calls)}")
        stop.set()  # the fifth round goes through: enough

    async def pause(stop_: asyncio.Event, seconds: float) -> bool:
        delays.append(seconds)
        return stop_.is_set()

    config = _config(tmp_path)
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round)
        daemon.pause = pause  # type: ignore[method-assign]
        runner = daemon.runners[0]
        with caplog.at_level(logging.ERROR, logger="meterd.collector.daemon"):
            await asyncio.wait_for(daemon._run_channel(runner, stop), 30)
        await daemon.writer.close()
        assert delays == [1, 2, 4, 8]  # doubling; the round that completed reset the back-off
        assert runner.backoff.failures == 0
        assert len(calls) == 5 and runner.rounds == 5
        failed = [r for r in caplog.records if "poll rt failed" in r.getMessage()]
        assert len(failed) == 4 and failed[0].exc_info is not None
        assert "RuntimeError: hook bug #1" in failed[0].getMessage()
        # each of the 5 rounds: a refused connection per meter; and each of the 4 failed rounds: one more
        assert runner.channel.stats.failures[FailureKind.LINK] == 5 * 2 + 4
        aborted = [a for a in store.attempts() if a.detail.startswith("round failed")]
        assert {(a.meter, a.item, a.outcome) for a in aborted} == {
            (m, i, "link") for m in ("000000000001", "000000000002") for i in ("0001FF00", "0201FF00")}
        assert len(aborted) == 4 * 4  # every item of every meter, in each of the 4 failed rounds
        assert "RuntimeError: hook bug" in aborted[0].detail


async def test_a_service_that_fails_is_logged_and_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path)
    runs: list[int] = []
    delays: list[float] = []
    stop = asyncio.Event()

    async def flaky(stop_: asyncio.Event) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError(f"bug #{len(runs)}")
        await stop_.wait()

    async def pause(stop_: asyncio.Event, seconds: float) -> bool:
        delays.append(seconds)
        return stop_.is_set()

    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store)
        daemon.runners.clear()  # no polling: the service is the subject
        daemon.add_service(flaky)
        daemon.pause = pause  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR):
            task = asyncio.create_task(daemon.run(stop))
            for _ in range(200):  # a bound, not a timing
                if len(runs) >= 3:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 30)
    assert len(runs) == 3 and delays == [1, 2]
    failed = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert len(failed) == 2 and "KeyError: 'bug #1'" in failed[0].getMessage() and failed[0].exc_info
