"""The ``meterd probe`` core against simulated meters over real links (TCP and pseudo-terminals).

Each test serves a simulated bus in the test's event loop and calls :func:`meterd.cli.probe.probe`
directly, so the results can be checked field by field.  Timeouts are short: a try that must fail
costs 0.2-0.3 s.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from conftest import free_port

from meterd.cli.probe import (
    DLT1997,
    DLT2007,
    MODBUS,
    LinkSpec,
    ProbeOptions,
    Setting,
    TryResult,
    default_units,
    judge,
    plan_settings,
    probe,
)
from meterd.collector.modbus import Framing
from meterd.collector.transports import serial as serial_transport
from meterd.errors import ProtocolError
from meterd.protocols.dlt645.frame import WILDCARD, Frame, Function, decode_frame, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, decode_request
from meterd.protocols.modbus import get_map
from meterd.simulators.dlt645 import Dlt645Bus, FaultPlan, Reply
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.serve import SimClock, serve_pty, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
FAST = 0.3


def tcp_link(endpoint: str) -> LinkSpec:
    host, _, port = endpoint.rpartition(":")
    return LinkSpec(host=host.strip("[]"), port=int(port))


def dlt_bus(*meters: tuple[str, str], faults: dict[str, FaultPlan] | None = None) -> Dlt645Bus:
    """(address, protocol) pairs -> a DL/T 645 bus."""
    models = [MeterModel(a, start=START, seed=i) for i, (a, _) in enumerate(meters)]
    protocols = {m.address: p for m, (_, p) in zip(models, meters)}
    return Dlt645Bus(models, faults=faults, protocols=protocols)


class RefusingBus(Dlt645Bus):
    """A bus of 2007 meters as some are in the field: a control code a meter does not know (1997's 01)
    is refused with that code's abnormal reply (``C1``, ERR 01) instead of silence; ``refuse`` lists
    2007 identifiers the meters refuse with ``D1`` ERR 02 (no requested data)."""

    def __init__(self, *args: object, refuse: frozenset[int] = frozenset(), **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.refuse = refuse

    def handle(self, request: bytes | bytearray | Frame, now: datetime) -> list[Reply]:
        try:
            frame = request if isinstance(request, Frame) else decode_frame(bytes(request))
        except ProtocolError:
            return []
        if not frame.is_reply and frame.address in self.addresses:
            if frame.function not in {int(f) for f in Function}:
                return [Reply(encode_frame(Frame(frame.address, 0xC0 | frame.function, b"\x01")))]
            if frame.function == Function.READ_DATA:
                req = decode_request(frame)
                if isinstance(req, ReadRequest) and req.di in self.refuse:
                    return [Reply(encode_frame(Frame(frame.address, 0xD1, b"\x02")))]
        return super().handle(request, now)


def outcomes(tries: list[TryResult]) -> list[tuple[str, str, str, str]]:
    return [(t.protocol, str(t.setting), t.target, t.outcome) for t in tries]


# --- planning ------------------------------------------------------------------------------------


def test_default_settings_per_protocol_on_serial_and_tcp() -> None:
    serial = ProbeOptions(LinkSpec(serial="/dev/ttyUSB0"), "000000000001")
    groups = [(p, str(s)) for p, s in plan_settings(serial)]
    assert groups[:6] == [
        (DLT2007, "2400 8E1"), (DLT2007, "1200 8E1"), (DLT2007, "9600 8E1"),
        (DLT1997, "2400 8E1"), (DLT1997, "1200 8E1"), (DLT1997, "9600 8E1"),
    ]  # fmt: skip
    assert groups[6:] == [(MODBUS, f"rtu {b} 8{p}1") for b in (9600, 19200, 4800, 2400) for p in "NE"]
    tcp = ProbeOptions(LinkSpec(host="127.0.0.1", port=502), "000000000001")
    assert [(p, str(s)) for p, s in plan_settings(tcp)] == [
        (DLT2007, "tcp"), (DLT1997, "tcp"), (MODBUS, "modbus-tcp"), (MODBUS, "rtu-over-tcp"),
    ]  # fmt: skip
    given = ProbeOptions(LinkSpec(serial="/dev/ttyS0"), "1", protocols=(MODBUS,), bauds=(4800,), parities=("O",))
    assert [str(s) for _, s in plan_settings(given)] == ["rtu 4800 8O1"]


def test_default_units_add_a_small_numeric_address() -> None:
    assert default_units("000000000017") == (1, 2, 3, 17)
    assert default_units("000000000002") == (1, 2, 3)
    assert default_units("000000000248") == (1, 2, 3)
    assert default_units(WILDCARD) == (1, 2, 3)


def test_plausibility_of_decoded_values() -> None:
    assert judge({"voltage.a": Decimal("230.1"), "voltage.b": Decimal(0), "frequency": Decimal("50.01")})[0]
    assert judge({"voltage.ab": Decimal("400.2")})[0]
    ok, why = judge({"voltage.a": Decimal("2301"), "voltage.b": Decimal("230")})
    assert not ok and "voltage.a = 2301" in why
    assert not judge({"voltage.a": Decimal(0), "voltage.b": Decimal(0)})[0]
    assert not judge({"voltage.a": Decimal(230), "frequency": Decimal(5000)})[0]


# --- DL/T 645 ------------------------------------------------------------------------------------


async def test_2007_meter_is_found_and_not_taken_for_1997() -> None:
    bus = dlt_bus(("000000000001", "dlt645-2007"))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "000000000001", protocols=(DLT2007, DLT1997), timeout=FAST,
                               exhaustive=True)  # fmt: skip
        report = await probe(options)
    assert outcomes(report.tries) == [
        (DLT2007, "tcp", "000000000001", "answered"),
        (DLT1997, "tcp", "000000000001", "timeout"),
    ]
    found = report.tries[0]
    assert found.evidence["address"] == "000000000001"
    assert found.evidence["meter.address"] == "000000000001"
    assert found.evidence["energy.active.import.total"].endswith(" kWh")
    assert report.detected == [found]


async def test_1997_meter_is_found_on_a_mixed_bus() -> None:
    bus = dlt_bus(("000000000001", "dlt645-2007"), ("000000000002", "dlt645-1997"))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "000000000002", protocols=(DLT2007, DLT1997), timeout=FAST)
        report = await probe(options)
    assert [t.outcome for t in report.tries] == ["timeout", "answered"]
    found = report.tries[1]
    assert found.protocol == DLT1997 and found.evidence["address"] == "000000000002"
    assert "(81)" in found.detail
    kwh = Decimal(found.evidence["energy.active.import.total"].removesuffix(" kWh"))
    assert kwh > 0


async def test_a_refused_read_is_reported_with_the_error_code_but_identifies_nothing() -> None:
    bus = dlt_bus(("000000000003", "dlt645-1997"), faults={"000000000003": FaultPlan.of("abnormal")})
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "3", protocols=(DLT1997,), timeout=FAST)
        report = await probe(options)
    (t,) = report.tries
    assert t.outcome == "refused" and not t.detected and "C1" in t.detail and "ERR 01" in t.detail
    assert t.evidence["address"] == "000000000003"
    assert report.detected == []
    (hint,) = report.hints()
    assert "a DL/T 645 meter 000000000003 is there" in hint


async def test_a_2007_only_meter_refusing_a_1997_request_is_not_reported_as_1997() -> None:
    """Issue 17: a 2007 meter that answers 1997's read (01) with an abnormal reply C1 was reported
    as found by DL/T 645-1997 -- against probe's own documentation."""
    bus = RefusingBus([MeterModel("000000000001", start=START)])
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        link = tcp_link(running.endpoint)
        alone = await probe(ProbeOptions(link, "1", protocols=(DLT1997,), timeout=FAST))
        first = await probe(ProbeOptions(link, "1", protocols=(DLT1997, DLT2007), timeout=FAST))
        every = await probe(ProbeOptions(link, "1", protocols=(DLT2007, DLT1997), timeout=FAST, exhaustive=True))
    (refusal,) = alone.tries
    assert refusal.outcome == "refused" and "abnormal reply (C1)" in refusal.detail and not refusal.detected
    assert alone.detected == [] and "is there" in alone.hints()[0]
    # tried first, the 1997 refusal identifies nothing and 2007 is tried next
    assert outcomes(first.tries) == [(DLT1997, "tcp", "000000000001", "refused"),
                                     (DLT2007, "tcp", "000000000001", "answered")]
    assert [t.protocol for t in first.detected] == [DLT2007]
    assert [t.protocol for t in every.detected] == [DLT2007]
    assert every.tries[1].outcome == "refused"


async def test_a_2007_meter_refusing_its_address_is_identified_by_its_energy() -> None:
    bus = RefusingBus([MeterModel("000000000001", start=START)], refuse=frozenset({0x04000401}))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        report = await probe(ProbeOptions(tcp_link(running.endpoint), "1", protocols=(DLT2007,), timeout=FAST))
    (t,) = report.tries
    assert t.outcome == "answered" and t.detected
    assert t.detail.startswith("abnormal reply (D1) to read 04000401: ERR 02")
    assert t.detail.endswith("; read 00010000: meter 000000000001 replied (91)")
    assert t.evidence["energy.active.import.total"].endswith(" kWh")


async def test_a_2007_meter_refusing_everything_identifies_nothing() -> None:
    bus = RefusingBus([MeterModel("000000000001", start=START)], refuse=frozenset({0x04000401, 0x00010000}))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        report = await probe(ProbeOptions(tcp_link(running.endpoint), "1", protocols=(DLT2007,), timeout=FAST))
    (t,) = report.tries
    assert t.outcome == "refused" and not t.detected
    assert t.evidence["00010000"] == "refused: no data"


async def test_probe_stops_at_the_first_identification_unless_all() -> None:
    """Issue 17: after 1997 had answered, probe went on through every Modbus combination."""
    bus = dlt_bus(("000000000002", "dlt645-1997"))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        link = tcp_link(running.endpoint)
        first = await probe(ProbeOptions(link, "2", units=(1, 2), timeout=0.2))
        every = await probe(ProbeOptions(link, "2", units=(1, 2), timeout=0.2, exhaustive=True))
    assert outcomes(first.tries) == [(DLT2007, "tcp", "000000000002", "timeout"),
                                     (DLT1997, "tcp", "000000000002", "answered")]
    assert [t.protocol for t in every.tries] == [DLT2007, DLT1997] + [MODBUS] * 4


async def test_modbus_units_stop_at_the_first_that_answers_unless_all() -> None:
    bus = ModbusBus({1: MeterModel("1", start=START), 2: MeterModel("2", start=START)}, get_map("generic"),
                    framing="tcp")  # fmt: skip
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        link = tcp_link(running.endpoint)
        first = await probe(ProbeOptions(link, "1", protocols=(MODBUS,), units=(1, 2, 3), timeout=FAST))
        every = await probe(ProbeOptions(link, "1", protocols=(MODBUS,), units=(1, 2, 3), timeout=FAST,
                                         exhaustive=True))  # fmt: skip
    assert outcomes(first.tries) == [(MODBUS, "modbus-tcp", "unit 1", "answered")]
    assert [(t.target, t.outcome) for t in every.tries if str(t.setting) == "modbus-tcp"] == [
        ("unit 1", "answered"), ("unit 2", "answered"), ("unit 3", "timeout")]


async def test_wildcard_address_finds_whoever_is_there() -> None:
    bus = dlt_bus(("000012345678", "dlt645-2007"))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), WILDCARD, protocols=(DLT2007,), timeout=FAST)
        report = await probe(options)
    (t,) = report.tries
    assert t.outcome == "answered" and t.target == WILDCARD
    assert t.evidence["address"] == "000012345678"
    assert "energy.active.import.total" in t.evidence  # read from the address it replied with


async def test_reply_from_another_address_is_reported_not_detected() -> None:
    bus = dlt_bus(("000000000001", "dlt645-2007"), faults={"000000000001": FaultPlan.of("wrong_address")})
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "1", protocols=(DLT2007,), timeout=FAST)
        report = await probe(options)
    (t,) = report.tries
    assert t.outcome == "wrong_address" and not t.detected and "reply came from" in t.detail
    assert report.hints() and "wrong_address" in report.hints()[0]


async def test_serial_reopens_the_port_for_every_line_setting(monkeypatch) -> None:
    opened: list[str] = []
    real_open = serial_transport.SerialTransport.open

    async def spy(self):  # type: ignore[no-untyped-def]
        opened.append(self.line_settings)
        await real_open(self)

    monkeypatch.setattr(serial_transport.SerialTransport, "open", spy)
    bus = dlt_bus(("000000000001", "dlt645-2007"), ("000000000002", "dlt645-1997"))
    async with await serve_pty(bus, clock=SimClock.starting(START), turnaround=0.005) as running:
        link = LinkSpec(serial=running.endpoint)
        every = ProbeOptions(link, "1", protocols=(DLT2007,), bauds=(9600, 2400), timeout=FAST, exhaustive=True)
        report = await probe(every)
        assert outcomes(report.tries) == [
            (DLT2007, "9600 8E1", "000000000001", "answered"),
            (DLT2007, "2400 8E1", "000000000001", "answered"),
        ]
        assert opened == ["9600 8E1", "2400 8E1"]
        opened.clear()
        first = ProbeOptions(link, "2", protocols=(DLT2007, DLT1997), bauds=(2400, 1200), timeout=FAST)
        report = await probe(first)
        # 2007: nobody at either rate; 1997 answers at 2400 and 1200 is not tried
        assert outcomes(report.tries) == [
            (DLT2007, "2400 8E1", "000000000002", "timeout"),
            (DLT2007, "1200 8E1", "000000000002", "timeout"),
            (DLT1997, "2400 8E1", "000000000002", "answered"),
        ]
        assert opened == ["2400 8E1", "1200 8E1", "2400 8E1"]


# --- Modbus --------------------------------------------------------------------------------------


async def test_modbus_tcp_exception_reply_is_a_detection_with_a_candidate_model() -> None:
    bus = ModbusBus({7: MeterModel("7", start=START)}, get_map("schneider-iem3x55"), framing="tcp")
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "7", protocols=(MODBUS,), units=default_units("7"),
                               timeout=FAST)  # fmt: skip
        report = await probe(options)
    # the first framing (MBAP) answered, so RTU over TCP is not tried
    assert outcomes(report.tries) == [(MODBUS, "modbus-tcp", f"unit {u}", "timeout") for u in (1, 2, 3)] + [
        (MODBUS, "modbus-tcp", "unit 7", "refused")
    ]
    t = report.tries[-1]
    assert "02 (ILLEGAL_ADDRESS)" in t.detail  # an iEM3x55's registers start far above holding register 0
    assert t.detected and "schneider-iem3x55" in t.candidates
    volts = Decimal(next(m for m in t.models if m.is_candidate).values["voltage.a"].removesuffix(" V"))
    assert 150 < volts < 300


async def test_modbus_rtu_over_tcp_is_found_after_mbap_fails() -> None:
    bus = ModbusBus({1: MeterModel("1", start=START)}, get_map("generic"), framing="rtu")
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "1", protocols=(MODBUS,), units=(1,), timeout=FAST)
        report = await probe(options)
    assert outcomes(report.tries) == [
        (MODBUS, "modbus-tcp", "unit 1", "timeout"),
        (MODBUS, "rtu-over-tcp", "unit 1", "answered"),
    ]
    t = report.tries[1]
    assert t.setting == Setting(framing=Framing.RTU)
    assert t.candidates == ["generic"]
    assert t.detail.startswith("FC03 holding 0 = ")


async def test_modbus_rtu_on_a_serial_line() -> None:
    bus = ModbusBus({2: MeterModel("2", start=START)}, get_map("generic"), framing="rtu")
    async with await serve_pty(bus, clock=SimClock.starting(START), turnaround=0.005) as running:
        options = ProbeOptions(LinkSpec(serial=running.endpoint), "2", protocols=(MODBUS,), units=(1, 2),
                               bauds=(9600,), parities=("N",), timeout=FAST)  # fmt: skip
        report = await probe(options)
    assert outcomes(report.tries) == [
        (MODBUS, "rtu 9600 8N1", "unit 1", "timeout"),
        (MODBUS, "rtu 9600 8N1", "unit 2", "answered"),
    ]
    assert report.tries[1].candidates == ["generic"]


# --- nothing there -------------------------------------------------------------------------------


async def test_nothing_answers_every_try_times_out() -> None:
    bus = dlt_bus(("000000000001", "dlt645-2007"))
    async with await serve_tcp(bus, clock=SimClock.starting(START)) as running:
        options = ProbeOptions(tcp_link(running.endpoint), "000000000009", units=(1,), timeout=0.2)
        report = await probe(options)
    assert [t.outcome for t in report.tries] == ["timeout"] * 4
    assert not report.detected and report.aborted is None


async def test_unreachable_link_aborts_naming_the_host() -> None:
    port = free_port()
    report = await probe(ProbeOptions(LinkSpec(host="127.0.0.1", port=port), "1", timeout=FAST))
    assert report.tries == [] and report.aborted is not None
    assert f"127.0.0.1:{port}" in report.aborted


@pytest.mark.parametrize("device", ["/dev/meterd-no-such-tty"])
async def test_missing_serial_device_aborts_naming_it(device: str) -> None:
    report = await probe(ProbeOptions(LinkSpec(serial=device), "1", timeout=FAST))
    assert report.tries == [] and report.aborted is not None and device in report.aborted
