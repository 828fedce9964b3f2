"""A channel whose link fails on every attempt logs the trouble once, not once per attempt (issue 21).

With 55 serial ports past select()'s reach the daemon wrote 83,000 lines in 15 s: each attempt
failed with an untranslated error (a traceback), the port reopened fine, so the channel logged
"link is back", and the next attempt failed again.  The spell of trouble now ends with an answer,
not with a port that opens.  A real pty served by the simulator; the transport's write is made to
fail as a bug would (a non-meterd exception) for the first attempts, then works.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from meterd.collector.channel import Channel, FailureKind, Timing, TransactionError
from meterd.collector.transports import SerialTransport
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock, serve_pty

START = datetime(2025, 6, 1, 8, 0)
A1 = "000000000001"


class BrokenWrites(SerialTransport):
    """A serial transport whose first ``failures`` writes raise what no one translated."""

    def __init__(self, *args: object, failures: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.failures = failures

    async def write(self, data: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise ValueError("filedescriptor out of range in select()")
        await super().write(data)


async def test_a_link_failing_every_attempt_is_logged_down_once_and_back_once(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = Dlt645Bus([MeterModel(A1, start=START, seed=1)])
    async with await serve_pty(bus, clock=SimClock.starting(START), wire_time=False, turnaround=0.0) as running:
        transport = BrokenWrites("bus1", running.endpoint, parity="N", failures=40)  # reopened at once: 8N1, see PARKED_SPEED
        channel = Channel("bus1", transport, timing=Timing(1.0, 0.5), retries=1)
        request = encode_request(ReadRequest(A1, 0x00010000))
        try:
            with caplog.at_level(logging.INFO, logger="meterd.collector.channel"):
                for _ in range(20):  # 40 attempts, each reopening the port and failing again
                    with pytest.raises(TransactionError) as caught:
                        await channel.transact(request)
                    assert caught.value.kind is FailureKind.LINK
                assert await channel.transact(request) is not None
        finally:
            await channel.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "meterd.collector.channel"]
    assert lines == ["channel bus1: link down: unexpected ValueError: filedescriptor out of range in select()",
                     "channel bus1: link is back"], lines
    assert channel.stats.failures == {FailureKind.LINK: 40}
