"""``meterd probe`` end to end: the installed command against simulated meters served over TCP.

The simulators run in a background thread of the test process (their own event loop), the
command in its own process through ``run_meterd``.  Short timeouts keep the failing tries cheap.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Callable, Iterator

import pytest
from conftest import free_port

from meterd.protocols.modbus import get_map
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.serve import SimClock, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
FAST = "0.3"


@contextmanager
def served(make_bus: Callable[[], object]) -> Iterator[str]:
    """Serve ``make_bus()`` over TCP from a background thread; yields "host:port"."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            box["running"] = await serve_tcp(make_bus(), clock=SimClock.starting(START))  # type: ignore[arg-type]

        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            box["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="probe-sim", daemon=True)
    thread.start()
    assert started.wait(10), "simulator did not start"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    running = box["running"]
    try:
        yield running.endpoint  # type: ignore[attr-defined]
    finally:
        asyncio.run_coroutine_threadsafe(running.close(), loop).result(10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def dlt645_bus() -> Dlt645Bus:
    """Meter 1 speaks DL/T 645-2007, meter 2 DL/T 645-1997."""
    meters = [MeterModel("1", start=START, seed=1), MeterModel("2", start=START, seed=2)]
    return Dlt645Bus(meters, protocols={"000000000002": "dlt645-1997"})


def modbus_tcp_bus() -> ModbusBus:
    return ModbusBus({5: MeterModel("5", start=START)}, get_map("eastron-sdm630"), framing="tcp")


def iem3x55_tcp_bus() -> ModbusBus:
    """An iEM3x55 has no holding register 0: it answers FC03 0 with exception 02."""
    return ModbusBus({5: MeterModel("5", start=START)}, get_map("schneider-iem3x55"), framing="tcp")


@pytest.fixture(scope="module")
def dlt645_endpoint() -> Iterator[str]:
    with served(dlt645_bus) as endpoint:
        yield endpoint


def test_probe_finds_a_2007_meter_and_not_1997(run_meterd, dlt645_endpoint):
    p = run_meterd("probe", "--tcp", dlt645_endpoint, "--address", "1", "--protocols", "2007,1997",
                   "--timeout", FAST, "--json", "--all")  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [(t["protocol"], t["outcome"]) for t in doc["tries"]] == [
        ("dlt645-2007", "answered"),
        ("dlt645-1997", "timeout"),
    ]
    (found,) = doc["detected"]
    assert found["protocol"] == "dlt645-2007" and found["evidence"]["address"] == "000000000001"
    assert found["evidence"]["energy.active.import.total"].endswith("kWh")
    assert doc["tries"][0]["settings"] == {} and doc["tries"][0]["link"] == "tcp"


def test_probe_stops_at_the_first_identification(run_meterd, dlt645_endpoint):
    p = run_meterd("probe", "--tcp", dlt645_endpoint, "--address", "1", "--timeout", FAST, "--json")
    assert p.returncode == 0, p.stderr
    assert [(t["protocol"], t["outcome"]) for t in json.loads(p.stdout)["tries"]] == [("dlt645-2007", "answered")]


def test_probe_finds_a_1997_meter(run_meterd, dlt645_endpoint):
    p = run_meterd("probe", "--tcp", dlt645_endpoint, "--address", "000000000002", "--protocols", "2007,1997",
                   "--timeout", FAST)  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines()]
    assert ["dlt645-2007", "tcp", "000000000002", "timeout"] == rows[2][:4]
    assert ["dlt645-1997", "tcp", "000000000002", "answered"] == rows[3][:4]
    assert "found: dlt645-1997 at tcp, address 000000000002" in p.stdout
    assert "found: dlt645-2007" not in p.stdout


def test_probe_finds_a_modbus_tcp_device_with_its_candidate_model(run_meterd):
    with served(iem3x55_tcp_bus) as endpoint:
        p = run_meterd("probe", "--tcp", endpoint, "--address", "5", "--protocols", "modbus",
                       "--unit", "4,5", "--timeout", FAST, "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [(t["link"], t["target"], t["outcome"]) for t in doc["tries"]] == [
        ("modbus-tcp", "unit 4", "timeout"),
        ("modbus-tcp", "unit 5", "refused"),  # exception 02 identifies a Modbus device all the same
    ]
    (found,) = doc["detected"]
    assert found["target"] == "unit 5" and "schneider-iem3x55" in found["candidate_models"]
    models = {m["model"]: m for m in doc["tries"][1]["models"]}
    assert models["schneider-iem3x55"]["status"] == "candidate"
    assert float(models["schneider-iem3x55"]["values"]["voltage.a"].split()[0]) > 150


def test_probe_table_shows_modbus_candidates(run_meterd):
    with served(modbus_tcp_bus) as endpoint:
        p = run_meterd("probe", "--tcp", endpoint, "--address", "5", "--protocols", "modbus",
                       "--modbus-framing", "tcp", "--unit", "5", "--timeout", FAST)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "candidate model eastron-sdm630: FC04 0 x6: voltage.a = " in p.stdout
    assert "found: modbus at modbus-tcp, unit 5" in p.stdout and "candidate models: eastron-sdm630" in p.stdout


def test_probe_nothing_there_exits_1_and_lists_the_timeouts(run_meterd, dlt645_endpoint):
    p = run_meterd("probe", "--tcp", dlt645_endpoint, "--address", "7", "--unit", "7", "--timeout", "0.2")
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[1].split() == ["PROTOCOL", "LINK", "TARGET", "OUTCOME", "DETAIL"]
    assert [line.split()[:5] for line in lines[2:6]] == [
        ["dlt645-2007", "tcp", "000000000007", "timeout", "no"],
        ["dlt645-1997", "tcp", "000000000007", "timeout", "no"],
        ["modbus", "modbus-tcp", "unit", "7", "timeout"],
        ["modbus", "rtu-over-tcp", "unit", "7", "timeout"],
    ]
    assert lines[6:] == ["nothing answered (4 tries)"]


def test_probe_trace_prints_every_frame(run_meterd, dlt645_endpoint):
    p = run_meterd("probe", "--tcp", dlt645_endpoint, "--address", "2", "--protocols", "2007,1997",
                   "--timeout", FAST, "--trace")  # fmt: skip
    assert p.returncode == 0, p.stderr
    err = p.stderr
    assert "TX -> FE FE FE FE 68 02 00 00 00 00 00 68 11 04" in err  # 2007 read 04000401
    assert "TX -> FE FE FE FE 68 02 00 00 00 00 00 68 01 02 43 C3" in err  # 1997 read 9010
    # each frame decoded in its edition, with its identifier 8 or 4 hex digits wide, at site time
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3}\+08:00 TX -> FE FE FE FE 68 02 00 00 00 00 00 68 01 02 43 C3", err, re.M)
    assert "DL/T 645-2007 request READ_DATA to 000000000002: 04000401 (communication address)" in err
    assert "DL/T 645-1997 request READ_DATA to 000000000002: 9010 (active.import energy total)" in err
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3}\+08:00 RX <- ", err, re.M)
    assert re.search(r"DL/T 645-1997 reply READ_DATA from 000000000002: 9010 \(active.import energy total\), "
                     r"energy.active.import.total = \d+\.\d\d kWh", err)
    assert "-- dlt645-1997 at tcp: read 9010" in err and "=> timeout" in err
    assert "ReadResponse97(" not in err  # no dataclass repr with the identifier in decimal


def test_probe_unreachable_link_names_the_host(run_meterd):
    port = free_port()
    p = run_meterd("probe", "--tcp", f"127.0.0.1:{port}", "--address", "1", "--timeout", FAST)
    assert p.returncode == 1
    assert f"127.0.0.1:{port}" in p.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tcp", "dtu.example", "--address", "1"], "'dtu.example'"),
        (["--tcp", "dtu:99999", "--address", "1"], "'dtu:99999'"),
        (["--tcp", "dtu:502", "--address", "12AB"], "'12AB'"),
        (["--tcp", "dtu:502", "--address", "1234567890123"], "'1234567890123'"),
        (["--tcp", "dtu:502", "--address", "1", "--unit", "300"], "'300'"),
        (["--tcp", "dtu:502", "--address", "1", "--protocols", "2007,iec"], "'iec'"),
        (["--tcp", "dtu:502", "--address", "1", "--baud", "2400"], "--baud"),
        (["--serial", "/dev/ttyUSB0", "--address", "1", "--baud", "fast"], "'fast'"),
        (["--serial", "/dev/ttyUSB0", "--address", "1", "--parity", "X"], "'X'"),
        (["--serial", "/dev/ttyUSB0", "--address", "1", "--modbus-framing", "tcp"], "--modbus-framing"),
        (["--address", "1"], "--serial"),
    ],
)
def test_probe_bad_arguments_exit_2_naming_the_value(run_meterd, args, named):
    p = run_meterd("probe", *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert named in p.stderr
