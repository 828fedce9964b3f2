"""Rounds that read DL/T 645-2007 numbers through the one-step decode give what the plain path gives.

The same simulated bus (same seed: the same values, the same garbled, refused and misaddressed
replies) is polled twice, once with :data:`meterd.collector.poll.FAST_READS` and once without;
readings and attempts must be equal item for item (latency aside).  The channel's matcher is
checked on its own too: a reply from another meter is still a mismatch, a reply for another
identifier or an echo is not taken as values, and a channel with a trace hook gets frames.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.collector import poll
from meterd.collector.channel import Channel, Dlt645Reply, Timing
from meterd.collector.poll import MeterTarget, poll_round
from meterd.collector.transports.base import Transport
from meterd.errors import AddressMismatchError
from meterd.protocols.dlt645.frame import PREAMBLE, Frame, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, encode_request, encode_response
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan
from meterd.simulators.model import MeterModel

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
ADDRESSES = [f"0000000010{n:02d}" for n in range(1, 7)]
ITEMS = [0x00010000, 0x00000000, 0x02010100, 0x02020100, 0x02030000, 0x02060000, 0x04000501,
         0x04000503, 0x0001FF00, 0x04000101, 0x01010000, 0x03110000]


class _BusTransport(Transport):
    """A simulated bus answering at once (wire bytes in, the bus's replies out)."""

    def __init__(self, bus: Dlt645Bus, now: datetime) -> None:
        super().__init__("bus")
        self.bus = bus
        self.now = now

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        self.now += timedelta(milliseconds=300)
        for reply in self.bus.handle(data, self.now.replace(tzinfo=None)):
            self._received(reply.data)

    async def close(self) -> None:
        pass


def _bus() -> Dlt645Bus:
    models = [MeterModel(a, start=T0.replace(tzinfo=None), seed=n) for n, a in enumerate(ADDRESSES)]
    faults = {ADDRESSES[1]: FaultPlan(garble=0.3, wrong_address=0.2), ADDRESSES[2]: FaultPlan(abnormal=0.3),
              ADDRESSES[3]: FaultPlan(no_answer=0.1)}
    return Dlt645Bus(models, seed=11, faults=faults)


async def _rounds(fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    monkeypatch.setattr(poll, "FAST_READS", fast)
    channel = Channel("c", _BusTransport(_bus(), T0), timing=Timing(0.05, 0.05), retries=1)
    targets = [MeterTarget(a, ct=Decimal(50), pt=Decimal(100)) if i % 2 else MeterTarget(a)
               for i, a in enumerate(ADDRESSES)]
    readings, attempts = [], []
    for n in range(3):
        result = await poll_round(channel, targets, ITEMS, T0 + timedelta(minutes=n))
        readings += result.readings
        attempts += [(a.meter, a.channel, a.item, a.timestamp, a.outcome, a.detail) for a in result.attempts]
    return readings, attempts


async def test_rounds_read_the_same_with_and_without_the_one_step_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = await _rounds(True, monkeypatch)
    plain = await _rounds(False, monkeypatch)
    assert [str(r.value) for r in fast[0]] == [str(r.value) for r in plain[0]]  # to the digit
    assert fast == plain
    outcomes = {a[4] for a in fast[1]}
    assert {"ok", "abnormal"} <= outcomes and outcomes - {"ok", "abnormal"}  # the faults happened
    assert any(r.quantity == "energy.active.import.total" for r in fast[0])


def _reply(address: str, di: int, data: bytes = bytes.fromhex("56341200")) -> bytes:
    return encode_frame(encode_response(ReadResponse(address, di, data)), preamble=PREAMBLE)


def _read(address: str, di: int) -> Frame:
    return encode_request(ReadRequest(address, di))


def test_the_matcher_returns_values_only_for_its_own_identifier() -> None:
    request = _read("000000001001", 0x00010000)
    got = Dlt645Reply(request, values=True).feed(_reply("000000001001", 0x00010000))
    assert isinstance(got, tuple) and got[3] == [Decimal("1234.56")]
    other = Dlt645Reply(request, values=True).feed(_reply("000000001001", 0x02010100, b"\x20\x02"))
    assert isinstance(other, Frame)  # the plain path says it is not the identifier asked for
    echo = Dlt645Reply(request, values=True).feed(encode_frame(request, preamble=PREAMBLE))
    assert echo is None
    plain = Dlt645Reply(request).feed(_reply("000000001001", 0x00010000))
    assert isinstance(plain, Frame)


def test_the_matcher_still_refuses_another_meters_reply() -> None:
    request = _read("000000001001", 0x00010000)
    with pytest.raises(AddressMismatchError):
        Dlt645Reply(request, values=True).feed(_reply("000000001002", 0x00010000))
    with pytest.raises(AddressMismatchError):
        Dlt645Reply(request).feed(_reply("000000001002", 0x00010000))


async def test_a_traced_channel_gets_frames() -> None:
    events = []
    bus = _bus()
    channel = Channel("c", _BusTransport(bus, T0), timing=Timing(0.05, 0.05), trace=events.append)
    got = await channel.transact_values(_read(ADDRESSES[0], 0x00010000))
    assert isinstance(got, Frame)
    assert [e.direction for e in events] == ["tx", "rx"] and events[1].frame == got
    untraced = Channel("c", _BusTransport(bus, T0), timing=Timing(0.05, 0.05))
    assert isinstance(await untraced.transact_values(_read(ADDRESSES[0], 0x00010000)), tuple)
